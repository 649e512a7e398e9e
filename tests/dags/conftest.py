"""The Airflow containers' environment the DAG files read at parse time (Compose sets it): every
DAG test parses the whole folder, so each sees the variables of every DAG file."""

from __future__ import annotations

import pytest

STACK_ENV = {
    "S3_BUCKET_LANDING": "conveyor-landing",
    "LANDING_KEY_TEMPLATE": "daily/{date}.csv",
    "LANDING_SCHEDULE": "@daily",
    "MODEL_NAME": "conveyor",
    "MONITOR_SCHEDULE": "*/30 * * * *",
    "PROMETHEUS_URL": "http://prometheus:9090",
    "PUSHGATEWAY_URL": "http://pushgateway:9091",
    "CONVEYOR_AIRFLOW_API_URL": "http://airflow-api-server:8080",
    "CONVEYOR_NOTES_USER": "conveyor-notes",
    "MLFLOW_UI_URL": "http://127.0.0.1:5000",
}


@pytest.fixture(autouse=True)
def _stack_env(monkeypatch):
    for key, value in STACK_ENV.items():
        monkeypatch.setenv(key, value)
