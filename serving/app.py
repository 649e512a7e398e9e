"""Assembling the server: the model's request parser, metrics, OpenAPI document and the API."""

from __future__ import annotations

from serving import openapi
from serving.api import ENDPOINTS, ServingAPI, ServingState
from serving.metrics import Metrics
from serving.requests import RequestParser
from serving.settings import Settings

__all__ = ["ServingState", "create_app"]


def create_app(settings: Settings, state: ServingState | None = None) -> ServingAPI:
    state = state or ServingState(error="no model loaded")
    model = state.model
    metrics = Metrics(set(ENDPOINTS))
    parser = None
    if model is not None:
        parser = RequestParser(model.spec, settings.max_batch_size, settings.max_errors)
        run_id = model.artifact.run_id or ""
        metrics.model_info.labels(model.name, model.version, run_id, model.path).set(1)
    document = openapi.build(settings, model, state.error)
    return ServingAPI(settings, state, metrics, parser, document)
