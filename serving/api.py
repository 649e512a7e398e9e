"""The HTTP API as one plain ASGI application.

No web framework: the prediction path is bytes in, bytes out, and a framework's router, request
objects and middleware stack cost more than an ONNX prediction (and FastAPI's import alone is
~0.4 s of the 1 s cold-start budget). Every route is a method here; the OpenAPI document that
describes them is serving.openapi's.

- POST /predict: the typed API (records with the signature's named fields).
- POST /invocations: MLflow's scoring-server contract (JSON formats, text/csv, MLflow's 400
  `{error_code, message}`, the model's `pyfunc_predict_fn`).
- GET|HEAD /health, /ping, /ready, /version, /metadata, /metrics, /openapi.json, /docs.

Bodies are read up to MAX_BODY_BYTES within BODY_TIMEOUT (413 / 408); a client that goes away
mid-request is recorded as status 499, never 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from serving.metrics import Metrics
from serving.model import LoadedModel
from serving.predictors import Batch, Output
from serving.requests import RequestError, RequestParser
from serving.settings import Settings
from serving.traffic import TrafficAggregator

log = logging.getLogger("serving.api")

JSON = b"application/json"
OPS = ("/health", "/ping", "/ready", "/version", "/metadata", "/metrics", "/openapi.json", "/docs")
PREDICT = ("/predict", "/invocations")
ENDPOINTS = frozenset(OPS + PREDICT)
CLIENT_CLOSED = 499
DOCS_HTML = b"""<!doctype html><html><head><title>Conveyor prediction server</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "openapi.json", dom_id: "#ui"})</script></body></html>"""


class ClientGone(Exception):
    """The client disconnected before the request was answered."""


@dataclass
class ServingState:
    model: LoadedModel | None = None
    error: str | None = None  # why there is no model
    draining: bool = False  # SIGTERM received: not ready, finishing in-flight requests

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


def json_reply(doc: Any, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


class ServingAPI:
    def __init__(
        self,
        settings: Settings,
        state: ServingState,
        metrics: Metrics,
        parser: RequestParser | None,
        openapi: dict[str, Any],
        traffic: TrafficAggregator | None = None,
    ) -> None:
        self.settings = settings
        self.traffic = traffic
        self.state = state
        self.metrics = metrics
        self.parser = parser
        self.openapi = orjson.dumps(openapi)
        self.get_routes = {p: getattr(self, "get_" + p.strip("/").replace(".", "_")) for p in OPS}
        model = state.model
        self.class_keys = [str(c) for c in model.classes] if model else []
        self.categorical = [
            (
                c.name,
                frozenset(c.categories),
                c.unknown == "error" or settings.reject_unknown_categories,
            )
            for c in (model.spec.columns or [] if model else [])
            if c.categories is not None
        ]

    # -- ASGI -----------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan is off (uvicorn); websockets are not served
            return
        start = time.perf_counter()
        path, method = scope["path"], scope["method"]
        try:
            reply = await self.route(path, method, scope, receive)
        except ClientGone:
            self.metrics.observe(path, method, CLIENT_CLOSED, time.perf_counter() - start)
            return
        except Exception:  # noqa: BLE001 - a bug: log it, answer 500, keep serving
            log.exception("unexpected error on %s %s", method, path)
            reply = json_reply({"detail": "internal error (logged)"}, 500)
        headers = [(b"content-type", reply.content_type), *reply.headers]
        body = b"" if method == "HEAD" else reply.body
        headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe(path, method, reply.status, time.perf_counter() - start)

    async def route(self, path: str, method: str, scope: dict, receive: Any) -> Reply:
        if path in PREDICT:
            if method != "POST":
                return self._method_not_allowed(b"POST")
            handler = self.predict if path == "/predict" else self.invocations
            return await handler(scope, receive)
        route = self.get_routes.get(path)
        if route is None:
            return json_reply({"detail": "Not Found"}, 404)
        if method not in ("GET", "HEAD"):
            return self._method_not_allowed(b"GET, HEAD")
        return route()

    @staticmethod
    def _method_not_allowed(allow: bytes) -> Reply:
        body = orjson.dumps({"detail": f"Method Not Allowed: use {allow.decode()}"})
        return Reply(405, body, headers=((b"allow", allow),))

    async def read_body(self, scope: dict, receive: Any) -> tuple[bytes, bytes]:
        """(content type, body) within MAX_BODY_BYTES and BODY_TIMEOUT."""
        limit = self.settings.max_body_bytes
        ctype = b""
        for key, value in scope["headers"]:
            if key == b"content-type":
                ctype = value
            elif key == b"content-length" and value.isdigit() and int(value) > limit:
                raise RequestError(413, f"body of {int(value)} bytes is over the limit of {limit}")
        chunks: list[bytes] = []
        size = 0
        more = True
        try:
            async with asyncio.timeout(self.settings.body_timeout):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise RequestError(413, f"body is over the limit of {limit} bytes")
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            raise RequestError(
                408, f"body not received within {self.settings.body_timeout:g} s"
            ) from None
        if not size:
            raise RequestError(400, "empty body: expected JSON")
        return ctype, chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- prediction -----------------------------------------------------------------------
    def observe_traffic(self, batch: Batch) -> None:
        """Count a validated batch into the profile's bins (column batches only: a tensor
        signature has no feature names to match the profile's)."""
        if self.traffic is not None and batch.columns is not None:
            self.traffic.observe_columns(batch.columns, batch.size)

    def score(self, batch: Batch) -> Output:
        """Traffic counted for drift, unknown categories counted (and refused with the setting),
        then the prediction. Refused values are counted too: they are what clients send."""
        model = self.state.model
        assert model is not None
        self.observe_traffic(batch)
        errors = []
        for name, known, refuse in self.categorical:
            positions = [
                i for i, v in enumerate(batch.columns[name]) if v is not None and v not in known
            ]
            if positions:
                self.metrics.unknown_categories.labels(name).inc(len(positions))
                if refuse:
                    errors += [
                        {
                            "record": i,
                            "field": name,
                            "type": "unknown_category",
                            "message": "a category value the model never saw in training",
                        }
                        for i in positions
                    ]
        if errors:
            errors.sort(key=lambda e: e["record"])
            shown = errors[: self.settings.max_errors]
            first = shown[0]
            raise RequestError(
                422,
                f"record {first['record']}, field '{first['field']}': {first['message']}"
                + (f" (+{len(errors) - 1} more errors)" if len(errors) > 1 else ""),
                shown,
                len(errors) - len(shown),
            )
        try:
            out = model.predict(batch)
        except (ValueError, TypeError) as exc:  # the sklearn path refusing an input
            message = f"the model cannot score this batch: {exc}".splitlines()[0]
            raise RequestError(422, message) from None
        if out.rejected:
            items = sorted(out.rejected.items())
            shown = [
                {"record": i, "field": None, "type": "out_of_range", "message": why}
                for i, why in items[: self.settings.max_errors]
            ]
            more = f" (+{len(items) - 1} more records)" if len(items) > 1 else ""
            raise RequestError(
                422, f"record {items[0][0]}: {items[0][1]}{more}", shown, len(items) - len(shown)
            )
        if out.labels is not None:
            self.metrics.count_predictions(model.version, out.labels)
        return out

    def _no_model(self, mlflow: bool) -> Reply:
        reason = f"no model loaded: {self.state.error or 'shutting down'}"
        if mlflow:
            return json_reply({"error_code": "TEMPORARILY_UNAVAILABLE", "message": reason}, 503)
        return json_reply({"detail": reason}, 503)

    async def predict(self, scope: dict, receive: Any) -> Reply:
        model, parser = self.state.model, self.parser
        if model is None or parser is None:
            return self._no_model(mlflow=False)
        try:
            ctype, body = await self.read_body(scope, receive)
            base = ctype.split(b";", 1)[0].strip().lower()
            if base != JSON and not base.endswith(b"+json"):
                raise RequestError(415, f"Content-Type {base.decode('latin-1')!r} is not JSON")
            out = self.score(parser.predict(body))
        except RequestError as exc:
            return self._predict_error(exc)
        if out.values is not None:
            predictions: list[Any] = [{"value": v} for v in out.values.tolist()]
        elif out.proba is not None:
            keys = self.class_keys
            predictions = [
                {"label": label, "probabilities": dict(zip(keys, p, strict=True))}
                for label, p in zip(out.labels or [], out.proba.tolist(), strict=True)
            ]
        else:
            predictions = [{"label": label} for label in out.labels or []]
        doc = {"model_name": model.name, "model_version": model.version, "predictions": predictions}
        return Reply(200, orjson.dumps(doc))

    @staticmethod
    def _predict_error(exc: RequestError) -> Reply:
        doc: dict[str, Any] = {"detail": exc.message}
        if exc.errors:
            doc["errors"] = exc.errors
        if exc.omitted:
            doc["errors_omitted"] = exc.omitted
        return json_reply(doc, exc.status)

    async def invocations(self, scope: dict, receive: Any) -> Reply:
        model, parser = self.state.model, self.parser
        if model is None or parser is None:
            return self._no_model(mlflow=True)
        try:
            ctype, body = await self.read_body(scope, receive)
            kind = self._mlflow_content_type(ctype)
            if isinstance(kind, Reply):
                return kind
            batch = parser.csv(body) if kind == "csv" else parser.invocations(body)
            predictions = self.mlflow_predictions(batch)
        except RequestError as exc:
            doc: dict[str, Any] = {"error_code": exc.code, "message": exc.message}
            if exc.errors:
                doc["errors"] = exc.errors
            if exc.omitted:
                doc["errors_omitted"] = exc.omitted
            # MLflow's server answers every client error 400; 413 and 408 are ours (it has none)
            return json_reply(doc, exc.status if exc.status in (408, 413, 503) else 400)
        return Reply(
            200, orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
        )

    @staticmethod
    def _mlflow_content_type(ctype: bytes) -> str | Reply:
        """ "json", "csv", or MLflow's own 415 (text/plain) for anything else."""
        parts = [p.strip() for p in ctype.decode("latin-1").split(";")]
        params = dict(p.partition("=")[::2] for p in parts[1:] if p)
        if params.get("charset", "utf-8").lower() != "utf-8":
            return Reply(415, b"The scoring server only supports UTF-8", b"text/plain")
        if set(params) - {"charset"}:
            extra = ", ".join(sorted(set(params) - {"charset"}))
            return Reply(
                415, f"Unrecognized content type parameters: {extra}.".encode(), b"text/plain"
            )
        mime = parts[0].lower()
        if mime == "application/json":
            return "json"
        if mime == "text/csv":
            return "csv"
        message = (
            "This predictor only supports the following content types: Types: "
            f"['text/csv', 'application/json']. Got '{ctype.decode('latin-1')}'."
        )
        return Reply(415, message.encode(), b"text/plain")

    def mlflow_predictions(self, batch: Batch) -> Any:
        """What the model's pyfunc_predict_fn returns, as `mlflow models serve` encodes it."""
        model = self.state.model
        assert model is not None
        fn = model.spec.predict_fn
        if fn not in ("predict", "predict_proba", "predict_log_proba"):
            self.observe_traffic(batch)
            try:
                result = model.predictor.call(batch, fn)
            except (ValueError, TypeError) as exc:
                raise RequestError(400, f"{fn} failed: {exc}".splitlines()[0]) from None
            return np.asarray(result).tolist()
        out = self.score(batch)
        if fn == "predict":
            return out.labels if out.values is None else out.values.tolist()
        if out.proba is None:
            raise RequestError(400, f"the model has no {fn}")
        if fn == "predict_log_proba":
            with np.errstate(divide="ignore"):
                return np.log(out.proba).tolist()
        return out.proba.tolist()

    # -- ops ------------------------------------------------------------------------------
    def get_health(self) -> Reply:
        return Reply(200, b'{"status":"ok"}')

    def get_ping(self) -> Reply:
        """MLflow's readiness probe (ScoringServerClient.wait_server_ready)."""
        return Reply(200 if self.state.ready else 503, b"\n")

    def get_version(self) -> Reply:
        """As MLflow's: the MLflow version (here: the one that saved the model), plain text."""
        model = self.state.model
        text = str(model.artifact.mlmodel.get("mlflow_version", "")) if model else ""
        return Reply(200, text.encode())

    def get_ready(self) -> Reply:
        model = self.state.model
        if self.state.ready and model is not None:
            return json_reply(
                {"ready": True, "model_name": model.name, "model_version": model.version}
            )
        reason = "shutting down" if self.state.draining else (self.state.error or "no model loaded")
        return json_reply({"ready": False, "reason": reason}, 503)

    def get_metadata(self) -> Reply:
        model = self.state.model
        if model is None:
            return self._no_model(mlflow=False)
        art, spec = model.artifact, model.spec
        meta = art.metadata
        return json_reply(
            {
                "model_name": model.name,
                "model_version": model.version,
                "run_id": art.run_id,
                "model_uuid": art.model_uuid,
                "data_version": meta.get("data_version"),
                "git_commit": meta.get("git_commit"),
                "metadata": meta,
                "task": spec.task,
                "classes": spec.classes,
                "predict_fn": spec.predict_fn,
                "features": [
                    {"name": c.name, "type": c.type, "required": c.required, "nullable": c.nullable}
                    for c in spec.columns or []
                ],
                "tensor": {"dtype": spec.tensor_dtype, "width": spec.tensor_width}
                if spec.columns is None
                else None,
                "inference_path": model.path,
                "inference_note": model.note,
                "parity": spec.parity,
                "max_batch_size": self.settings.max_batch_size,
                "max_body_bytes": self.settings.max_body_bytes,
            }
        )

    def get_metrics(self) -> Reply:
        data, ctype = self.metrics.expose()
        return Reply(200, data, ctype.encode())

    def get_openapi_json(self) -> Reply:
        return Reply(200, self.openapi)

    def get_docs(self) -> Reply:
        return Reply(200, DOCS_HTML, b"text/html; charset=utf-8")
