"""Conveyor prediction server: FastAPI in front of the champion MLflow sklearn model."""
