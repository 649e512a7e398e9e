"""Prometheus metrics: requests and latency by endpoint and status (recorded by serving.api;
a client that went away before its answer is status 499, nginx's "client closed request"),
predictions by class, unknown category values by feature, and the served model.

With several worker processes, PROMETHEUS_MULTIPROC_DIR is set by serving.server before this
module is imported, and /metrics aggregates every worker's files.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no *_created series: they double the exposition for no use

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, endpoints: set[str]) -> None:
        self.endpoints = endpoints
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "conveyor_http_requests_total",
            "HTTP requests by endpoint, method and status code.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "conveyor_http_request_duration_seconds",
            "HTTP request latency by endpoint and status code.",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "conveyor_predictions_total",
            "Predicted records by predicted class.",
            ["model_version", "predicted_class"],
            registry=self.registry,
        )
        self.unknown_categories = Counter(
            "conveyor_unknown_categories_total",
            "Category values the model never saw in training, by feature.",
            ["feature"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "conveyor_model_info",
            "The served model (value 1): name, version, run, and the inference path that serves "
            "it (onnx: compiled, sklearn: the estimator itself).",
            ["name", "version", "run_id", "inference_path"],
            registry=self.registry,
            multiprocess_mode="max",
        )
        self._by_class: dict[tuple[str, Any], Any] = {}
        self._requests: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def count_predictions(self, version: str, labels: list[Any]) -> None:
        for label, n in Tally(labels).items():
            child = self._by_class.get((version, label))
            if child is None:
                child = self._by_class[(version, label)] = self.predictions.labels(
                    version, str(label)
                )
            child.inc(n)

    def expose(self) -> tuple[bytes, str]:
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if path:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=path)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe(self, path: str, method: str, status: int, seconds: float) -> None:
        children = self._requests.get((path, method, status))
        if children is None:
            endpoint = path if path in self.endpoints else "other"
            code = str(status)
            children = (
                self.requests.labels(endpoint, method, code),
                self.latency.labels(endpoint, code),
            )
            if path in self.endpoints:  # bounded: known paths x methods x statuses
                self._requests[(path, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)
