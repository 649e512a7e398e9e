"""Assembling the server: the model's request parser, metrics, OpenAPI document and the API."""

from __future__ import annotations

from serving import openapi
from serving.api import ENDPOINTS, ServingAPI, ServingState
from serving.metrics import Metrics
from serving.requests import RequestParser
from serving.settings import Settings
from serving.traffic import TrafficAggregator

__all__ = ["ServingState", "create_app"]


def create_app(settings: Settings, state: ServingState | None = None) -> ServingAPI:
    state = state or ServingState(error="no model loaded")
    model = state.model
    metrics = Metrics(set(ENDPOINTS))
    parser = traffic = None
    if model is not None:
        parser = RequestParser(model.spec, settings.max_batch_size, settings.max_errors)
        run_id = model.artifact.run_id or ""
        metrics.model_info.labels(model.name, model.version, run_id, model.path).set(1)
        # Served inputs in the reference profile's bins (the drift monitor's input); None: the
        # model ships no profile and is served without drift counts.
        traffic = TrafficAggregator.from_model_dir(
            model.artifact.model_dir, model.version, metrics.registry
        )
    document = openapi.build(settings, model, state.error)
    return ServingAPI(settings, state, metrics, parser, document, traffic)
