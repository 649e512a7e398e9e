"""The OpenAPI 3.1 document of serving.api, generated from the model's serving spec.

Every bound the server enforces is stated here (fields, types, nullability, the batch size, the
range of numbers on /predict), so that a schema-driven client or fuzzer (schemathesis) gets 200
for every request the schema allows and a documented 4xx for every other one.
"""

from __future__ import annotations

from typing import Any

from serving.model import LoadedModel
from serving.requests import INT32, INT64, MAX_ABS_NUMBER, MLFLOW_FORMATS, NUMERIC_STRING
from serving.settings import Settings

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*codes: int, schema: str = "Error") -> dict[str, Any]:
    text = {
        400: "Body is not JSON (or, on /invocations, any invalid input: MLflow's 400)",
        408: "Body not received within BODY_TIMEOUT",
        413: "Body or batch too large",
        415: "Unsupported Content-Type",
        422: "Invalid record: the message names the record and the field",
        503: "No model loaded (see /ready for the reason)",
    }
    out = {str(c): _json(_ref(schema), text[c]) for c in codes}
    if schema == "MlflowError" and "415" in out:  # MLflow answers 415 in plain text
        out["415"] = {
            "description": text[415],
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    return out


def field_schema(column_type: str, nullable: bool) -> dict[str, Any]:
    if column_type in ("double", "float"):
        schema: dict[str, Any] = {
            "type": "number",
            "minimum": -MAX_ABS_NUMBER,
            "maximum": MAX_ABS_NUMBER,
        }
    elif column_type in ("long", "integer"):
        bits = 63 if column_type == "long" else 31
        schema = {"type": "integer", "minimum": -(2**bits), "maximum": 2**bits - 1}
    elif column_type == "boolean":
        schema = {"type": "boolean"}
    else:
        schema = {"type": "string"}
    return {"anyOf": [schema, {"type": "null"}]} if nullable else schema


def mlflow_field_schema(column_type: str, nullable: bool) -> dict[str, Any]:
    """What /invocations takes for a field: MLflow's coercions (serving.requests)."""
    if column_type in ("double", "float", "long", "integer"):
        options: list[dict[str, Any]] = [
            {"type": "number", "minimum": -MAX_ABS_NUMBER, "maximum": MAX_ABS_NUMBER},
            {"type": "boolean"},
            {"type": "string", "pattern": NUMERIC_STRING},
        ]
        if column_type in ("long", "integer"):  # and any int of the column's type, exact
            lo, hi = INT64 if column_type == "long" else INT32
            options.insert(0, {"type": "integer", "minimum": lo, "maximum": hi})
        nullable = nullable and column_type in ("double", "float")  # pandas: no null int64
    elif column_type == "string":
        options = [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]
    else:
        options = [{"type": "boolean"}]
    return {"anyOf": options + ([{"type": "null"}] if nullable else [])}


def split_schema(model: LoadedModel | None, max_batch: int) -> dict[str, Any]:
    """dataframe_split with the signature's columns in its order (other orders are taken too)."""
    spec = model.spec if model else None
    if spec is None or spec.columns is None:
        row: dict[str, Any] = {"type": "array"}
        columns: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
    else:
        columns = {"const": spec.input_names}
        row = {
            "type": "array",
            "prefixItems": [mlflow_field_schema(c.type, c.nullable) for c in spec.columns],
            "items": False,
            "minItems": len(spec.columns),
        }
    return {
        "type": "object",
        "required": ["columns", "data"],
        "properties": {
            "columns": columns,
            "data": {"type": "array", "items": row, "minItems": 1, "maxItems": max_batch},
        },
    }


def input_schemas(model: LoadedModel | None) -> dict[str, Any]:
    """`Record` (column signature) or `Row` (tensor signature), and what /predict takes."""
    spec = model.spec if model else None
    if spec is None:
        return {"Record": {"type": "object"}}
    if spec.columns is None:
        number = field_schema("double", False)
        item = {"anyOf": [number, {"type": "null"}]} if spec.tensor_nullable else number
        width = spec.tensor_width
        return {
            "Row": {
                "type": "array",
                "description": f"One record: {width} numbers (the model's tensor input).",
                "items": item,
                "minItems": width,
                "maxItems": width,
            }
        }
    required = [c.name for c in spec.columns if c.required]
    return {
        "Record": {
            "type": "object",
            "title": "Record",
            "description": "One record: the model signature's columns (null = missing).",
            "properties": {c.name: field_schema(c.type, c.nullable) for c in spec.columns},
            "required": required,
            "additionalProperties": False,
        },
        "MlflowRecord": {
            "type": "object",
            "description": "One record as MLflow's server takes it. Extra fields are ignored (not "
            "declared: the values a body may hold are bounded by what a full batch needs).",
            "properties": {c.name: mlflow_field_schema(c.type, c.nullable) for c in spec.columns},
            "required": required,
            "additionalProperties": False,
        },
    }


def prediction_schema(model: LoadedModel | None) -> dict[str, Any]:
    spec = model.spec if model else None
    if spec is not None and spec.task == "regression":
        item: dict[str, Any] = {
            "type": "object",
            "required": ["value"],
            "properties": {"value": {"anyOf": [{"type": "number"}, {"type": "array"}]}},
        }
    else:
        item = {
            "type": "object",
            "required": ["label"],
            "properties": {
                "label": {},
                "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
            },
        }
    return {
        "type": "object",
        "required": ["model_name", "model_version", "predictions"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "predictions": {"type": "array", "items": item},
        },
    }


def build(settings: Settings, model: LoadedModel | None, error: str | None) -> dict[str, Any]:
    inputs = input_schemas(model)
    one = _ref(next(iter(inputs)))
    batch = {"type": "array", "items": one, "minItems": 1, "maxItems": settings.max_batch_size}
    predict_body = {"anyOf": [batch] if model and model.spec.columns is None else [one, batch]}
    if model and model.spec.columns is None:  # a single row is a flat list: also accepted
        predict_body["anyOf"].append(one)
    mlflow_one = _ref("MlflowRecord") if "MlflowRecord" in inputs else one
    records = {
        "type": "array",
        "items": mlflow_one,
        "minItems": 1,
        "maxItems": settings.max_batch_size,
    }
    mlflow_request = {
        "type": "object",
        "description": f"Exactly one of {', '.join(MLFLOW_FORMATS)} (MLflow's input formats); "
        "NaN means a missing value, as in MLflow's server.",
        "properties": {
            "dataframe_split": split_schema(model, settings.max_batch_size),
            "dataframe_records": records,
            # also taken, as in MLflow: an object of equally long columns, which JSON Schema
            # cannot state ("equally long"): described, not declared
            "inputs": records,
            "instances": records,
            "params": {"description": "Ignored (sklearn models take none)."},
        },
        "oneOf": [{"required": [key]} for key in MLFLOW_FORMATS],
        "additionalProperties": False,
    }
    ops = {
        "/health": ("Liveness: the process answers", {"200": {"description": "alive"}}),
        "/ping": (
            "MLflow's readiness probe",
            {"200": {"description": "ready"}, "503": {"description": "not ready"}},
        ),
        "/version": (
            "MLflow version that saved the model (MLflow's /version)",
            {"200": {"description": "text"}},
        ),
        "/ready": (
            "Readiness: model loaded and warmed up, not shutting down",
            {"200": {"description": "ready"}, "503": {"description": "not ready (reason given)"}},
        ),
        "/metadata": (
            "Model, lineage, schema and inference path",
            {"200": {"description": "metadata"}, **_errors(503)},
        ),
        "/metrics": ("Prometheus metrics", {"200": {"description": "text exposition format"}}),
    }
    paths: dict[str, Any] = {
        path: {
            "get": {
                "tags": ["ops"],
                "summary": summary,
                "operationId": path.strip("/"),
                "responses": responses,
            }
        }
        for path, (summary, responses) in ops.items()
    }
    paths["/predict"] = {
        "post": {
            "tags": ["model"],
            "operationId": "predict",
            "summary": "Predict one record or a batch (the typed API)",
            "requestBody": {"required": True, "content": {JSON: {"schema": predict_body}}},
            "responses": {
                "200": _json(
                    _ref("Predictions"),
                    "Per record: label and class probabilities "
                    "(classification) or value (regression)",
                ),
                **_errors(400, 408, 413, 415, 422, 503),
            },
        }
    }
    paths["/invocations"] = {
        "post": {
            "tags": ["model"],
            "operationId": "invocations",
            "summary": "MLflow scoring-server contract (JSON formats or text/csv)",
            "description": "Also `Content-Type: text/csv`: a header row of column names, then "
            "one record per line (an empty field is missing).",
            "requestBody": {
                "required": True,
                # text/csv is taken too, but no JSON Schema states a valid CSV: described above
                "content": {JSON: {"schema": _ref("MlflowRequest")}},
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["predictions"],
                        "properties": {"predictions": {"type": "array"}},
                    },
                    "What the model's pyfunc_predict_fn returns, as MLflow encodes it",
                ),
                **_errors(400, 408, 413, 415, 503, schema="MlflowError"),
            },
        }
    }
    description = (
        f"Serves model '{model.name}' version {model.version} ({model.path} inference path)."
        if model
        else f"No model loaded: {error}"
    )
    error_item = {
        "type": "object",
        "properties": {
            "record": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "field": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "type": {"type": "string"},
            "message": {"type": "string"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Conveyor prediction server",
            "version": model.version if model else "no-model",
            "description": description,
        },
        "paths": paths,
        "components": {
            "schemas": {
                **inputs,
                "Predictions": prediction_schema(model),
                "MlflowRequest": mlflow_request,
                "Error": {
                    "type": "object",
                    "required": ["detail"],
                    "properties": {
                        "detail": {"type": "string"},
                        "errors": {"type": "array", "items": error_item},
                        "errors_omitted": {"type": "integer"},
                    },
                },
                "MlflowError": {
                    "type": "object",
                    "required": ["error_code", "message"],
                    "properties": {
                        "error_code": {"type": "string"},
                        "message": {"type": "string"},
                        "errors": {"type": "array", "items": error_item},
                        "errors_omitted": {"type": "integer"},
                    },
                },
            }
        },
    }
