"""Prometheus metrics, recorded by a plain ASGI middleware (no BaseHTTPMiddleware overhead).

With several worker processes, PROMETHEUS_MULTIPROC_DIR is set by serving.server before this
module is imported, and /metrics aggregates every worker's files.
"""

from __future__ import annotations

import os
import time
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
        self.model_info = Gauge(
            "conveyor_model_info",
            "The served model (value 1), labelled with its name, version, run and predictor.",
            ["name", "version", "run_id", "predictor"],
            registry=self.registry,
            multiprocess_mode="max",
        )
        self._by_class: dict[tuple[str, int], Any] = {}

    def count_predictions(self, version: str, labels: list[str], idx: list[int]) -> None:
        counts: dict[int, int] = {}
        for i in idx:
            counts[i] = counts.get(i, 0) + 1
        for i, n in counts.items():
            child = self._by_class.get((version, i))
            if child is None:
                child = self._by_class[(version, i)] = self.predictions.labels(version, labels[i])
            child.inc(n)

    def expose(self) -> tuple[bytes, str]:
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if path:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=path)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def middleware(self, app: Any) -> Any:
        endpoints, requests, latency = self.endpoints, self.requests, self.latency
        cache: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # labelled children, by request

        async def asgi(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def send_status(message: dict) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                path, method = scope["path"], scope["method"]
                children = cache.get((path, method, status))
                if children is None:
                    endpoint = path if path in endpoints else "other"
                    code = str(status)
                    children = (
                        requests.labels(endpoint, method, code),
                        latency.labels(endpoint, code),
                    )
                    if path in endpoints:  # bounded: known paths x methods x statuses
                        cache[(path, method, status)] = children
                children[0].inc()
                children[1].observe(time.perf_counter() - start)

        return asgi
