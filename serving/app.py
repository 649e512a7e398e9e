"""The FastAPI application: /predict, /invocations, /health, /ready, /metadata, /metrics, docs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
import pydantic_core
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.metrics import Metrics
from serving.model import LoadedModel
from serving.schema import RequestError, RequestSchema
from serving.settings import Settings

log = logging.getLogger("serving.app")

ENDPOINTS = {"/predict", "/invocations", "/health", "/ready", "/metadata", "/metrics"}
ENDPOINTS |= {"/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
JSON = "application/json"


@dataclass
class ServingState:
    model: LoadedModel | None = None
    error: str | None = None  # why there is no model
    draining: bool = False  # SIGTERM received: not ready, finishing in-flight requests

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=JSON, headers=headers)


def _error(exc: RequestError) -> Response:
    body: dict[str, Any] = {"detail": exc.message}
    if exc.errors:
        body["errors"] = exc.errors
    return _json(body, exc.status)


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Body is not JSON",
        413: "Body or batch too large",
        415: "Content-Type is not application/json",
        422: "Invalid record: the message names the record index and the field",
        503: "No model loaded (see /ready for the reason)",
    }
    return {
        c: {
            "description": text[c],
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }


ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "record": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                    "field": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    "type": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}


def create_app(settings: Settings, state: ServingState | None = None) -> FastAPI:
    state = state or ServingState(error="no model loaded")
    model = state.model
    schema = RequestSchema(model.features, settings.max_batch_size) if model else None
    metrics = Metrics(ENDPOINTS)
    if model is not None:
        metrics.model_info.labels(
            model.name, model.version, model.run_id or "", model.predictor_kind
        ).set(1)
        class_keys = [str(c) for c in model.classes]
    limit = settings.max_body_bytes

    app = FastAPI(
        title="Conveyor prediction server",
        version=model.version if model else "no-model",
        description=(
            f"Serves model '{model.name}' version {model.version}."
            if model
            else f"No model loaded: {state.error}"
        ),
    )
    app.state.serving = state
    app.state.metrics = metrics

    # -- error handlers: a client mistake is a 4xx with a one-line reason, never a 500 -----
    # (the prediction endpoints answer their own errors: see PredictionLane)
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            {
                "record": None,
                "field": ".".join(str(p) for p in e.get("loc", ())[1:]) or None,
                "type": e.get("type", "invalid"),
                "message": e.get("msg", "invalid"),
            }
            for e in exc.errors()
        ]  # never the input itself: it may be a NaN that no JSON encoder accepts
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        return _json(
            {"detail": f"{first['field'] or 'request'}: {first['message']}", "errors": errors}, 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _json({"detail": str(exc.detail)}, exc.status_code, getattr(exc, "headers", None))

    def no_model() -> Response:
        status, body = no_model_bytes()
        return Response(body, status_code=status, media_type=JSON)

    # -- routes --------------------------------------------------------------------------
    @app.get("/health", tags=["ops"], summary="Liveness: the process answers")
    async def health() -> Response:
        return _json({"status": "ok"})

    @app.get(
        "/ready",
        tags=["ops"],
        summary="Readiness: model loaded and warmed up, not shutting down",
        responses={503: {"description": "Not ready (reason given)"}},
    )
    async def ready() -> Response:
        if state.ready:
            return _json({"ready": True, "model_name": model.name, "model_version": model.version})
        reason = "shutting down" if state.draining else (state.error or "no model loaded")
        return _json({"ready": False, "reason": reason}, 503)

    @app.get(
        "/metadata",
        tags=["model"],
        summary="Model name, version, run, lineage and feature schema",
        responses=_error_responses(503),
    )
    async def metadata() -> Response:
        if model is None:
            return no_model()
        meta = model.metadata
        return _json(
            {
                "model_name": model.name,
                "model_version": model.version,
                "run_id": model.run_id,
                "model_uuid": model.model_uuid,
                "data_version": meta.get("data_version"),
                "git_commit": meta.get("git_commit"),
                "metadata": meta,
                "classes": model.classes,
                "features": [
                    {"name": f.name, "type": f.type, "required": f.required} for f in model.features
                ],
                "predictor": model.predictor_kind,
                "predictor_note": model.fast_path_note,
                "max_batch_size": settings.max_batch_size,
                "max_body_bytes": settings.max_body_bytes,
            }
        )

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def metrics_endpoint() -> Response:
        data, ctype = metrics.expose()
        return Response(data, media_type=ctype)

    record_ref = {"$ref": "#/components/schemas/Record"}
    predict_body = {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "anyOf": [
                        record_ref,
                        {
                            "type": "array",
                            "items": record_ref,
                            "minItems": 1,
                            "maxItems": settings.max_batch_size,
                        },
                    ]
                }
            }
        },
    }
    predict_response = {
        200: {
            "description": "Per record: predicted class and class probabilities",
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Predictions"}}},
        },
        **_error_responses(400, 413, 415, 422, 503),
    }

    # -- prediction handlers: bytes in, (status, bytes) out, run by the PredictionLane --
    def predict(body: bytes) -> tuple[int, bytes]:
        if model is None or schema is None:
            return no_model_bytes()
        records = schema.parse_predict(body)
        idx, proba = model.predict_indices(records)
        classes = model.classes
        metrics.count_predictions(model.version, class_keys, idx)
        predictions = [
            {"label": classes[i], "probabilities": dict(zip(class_keys, p, strict=True))}
            for i, p in zip(idx, proba.tolist(), strict=True)
        ]
        out = {"model_name": model.name, "model_version": model.version, "predictions": predictions}
        return 200, orjson.dumps(out)

    def invocations(body: bytes) -> tuple[int, bytes]:
        if model is None or schema is None:
            return no_model_bytes()
        try:
            doc = pydantic_core.from_json(body, allow_inf_nan=True)
        except ValueError as exc:
            raise RequestError(400, f"body is not valid JSON: {exc}") from None
        records = schema.parse_mlflow(doc)
        idx, _ = model.predict_indices(records)
        metrics.count_predictions(model.version, class_keys, idx)
        return 200, orjson.dumps({"predictions": [model.classes[i] for i in idx]})

    def no_model_bytes() -> tuple[int, bytes]:
        return 503, orjson.dumps({"detail": f"no model loaded: {state.error or 'shutting down'}"})

    invocations_doc = {
        "tags": ["model"],
        "summary": "MLflow scoring-server compatible: dataframe_split, dataframe_records, inputs",
        "description": "NaN means a missing value here, as in MLflow's server.",
        "operationId": "invocations",
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/MlflowRequest"}}},
        },
        "responses": {
            200: {
                "description": "MLflow's response shape: predicted classes",
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "properties": {"predictions": {"type": "array", "items": {}}},
                        }
                    }
                },
            },
            **_error_responses(400, 413, 415, 422, 503),
        },
    }
    predict_doc = {
        "tags": ["model"],
        "summary": "Predict one record (object) or a batch (list of records)",
        "operationId": "predict",
        "requestBody": predict_body,
        "responses": predict_response,
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path, item in (("/predict", predict_doc), ("/invocations", invocations_doc)):
            responses = {str(code): r for code, r in item["responses"].items()}
            doc.setdefault("paths", {})[path] = {"post": {**item, "responses": responses}}
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        components["Record"] = schema.json_schema() if schema else {"type": "object"}
        components["Error"] = ERROR_SCHEMA
        components["Predictions"] = {
            "type": "object",
            "required": ["model_name", "model_version", "predictions"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "predictions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["label", "probabilities"],
                        "properties": {
                            "label": {},
                            "probabilities": {
                                "type": "object",
                                "additionalProperties": {"type": "number"},
                            },
                        },
                    },
                },
            },
        }
        records = {"type": "array", "items": record_ref}
        components["MlflowRequest"] = {
            "type": "object",
            "description": "Exactly one of the keys (MLflow's scoring-server input formats).",
            "properties": {
                "dataframe_split": {
                    "type": "object",
                    "properties": {
                        "columns": {"type": "array", "items": {"type": "string"}},
                        "data": {"type": "array", "items": {"type": "array"}},
                    },
                },
                "dataframe_records": records,
                "inputs": records,
            },
            "minProperties": 1,
            "maxProperties": 1,
        }
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
    lane = {"/predict": predict, "/invocations": invocations}
    app.add_middleware(PredictionLane, handlers=lane, limit=limit)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)  # outermost: sees every response
    return app


class _ClientGone(Exception):
    pass


class PredictionLane:
    """Raw ASGI for POST /predict and /invocations: the prediction hot path skips FastAPI's
    router, Request objects and exception middleware (they cost more than the prediction).
    Everything else goes on to the FastAPI app. Documented in the OpenAPI schema by create_app.
    """

    def __init__(self, app: Any, handlers: dict[str, Any], limit: int) -> None:
        self.app = app
        self.handlers = handlers
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        handler = self.handlers.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        headers = [(b"content-type", JSON.encode())]
        if scope["method"] != "POST":
            status, body = 405, b'{"detail":"Method Not Allowed: use POST"}'
            headers.append((b"allow", b"POST"))
        else:
            try:
                status, body = handler(await self._body(scope, receive))
            except RequestError as exc:
                status, body = exc.status, _error(exc).body
            except _ClientGone:
                return
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _body(self, scope: dict, receive: Any) -> bytes:
        limit = self.limit
        for key, value in scope["headers"]:
            if key == b"content-type":
                base = value.split(b";", 1)[0].strip().lower().decode("latin-1")
                if base != JSON and not base.endswith("+json"):
                    raise RequestError(415, f"Content-Type {base or 'empty'!r} is not {JSON}")
            elif key == b"content-length" and value.isdigit() and int(value) > limit:
                raise RequestError(413, f"body of {int(value)} bytes is over the limit of {limit}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if not size:
            raise RequestError(400, "empty body: expected JSON")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _MetricsMiddleware:
    def __init__(self, app: Any, metrics: Metrics) -> None:
        self._asgi = metrics.middleware(app)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self._asgi(scope, receive, send)
