"""Request schema generated from the model's MLflow signature, and the one-line errors.

Each record is a TypedDict whose keys are the signature's column names (any string, spaces
included), with strict types: finite floats, 64-bit ints, strings, booleans; `null` is allowed
(the pipeline's imputers fill it), a missing or unknown field is not. Validation runs in
pydantic-core straight from the request bytes, and the errors it reports never carry the input
value (so a NaN is never echoed and never reaches a JSON encoder).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from serving.model import Feature

INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")


class RequestError(Exception):
    """A client mistake: HTTP status, one-line message, optional per-field errors."""

    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


def _field_type(feature: Feature) -> Any:
    if feature.type in ("double", "float"):
        base: Any = Annotated[float, Field(strict=True, allow_inf_nan=False)]
    elif feature.type in ("long", "integer"):
        lo, hi = INT64 if feature.type == "long" else INT32
        base = Annotated[int, Field(strict=True, ge=lo, le=hi)]
    elif feature.type == "boolean":
        base = Annotated[bool, Field(strict=True)]
    else:
        base = Annotated[str, Field(strict=True)]
    return base | None


class RequestSchema:
    def __init__(self, features: list[Feature], max_batch: int) -> None:
        self.features = features
        self.max_batch = max_batch
        record = TypedDict(  # type: ignore[misc]
            "Record", {f.name: _field_type(f) for f in features}, total=True
        )
        record.__pydantic_config__ = ConfigDict(extra="forbid", title="Record")  # type: ignore[attr-defined]
        self.record = TypeAdapter(record)
        self.records = TypeAdapter(list[record])

    def json_schema(self) -> dict[str, Any]:
        schema = self.record.json_schema(ref_template="#/components/schemas/{model}")
        schema["description"] = "One record: the model signature's columns (null = missing)."
        return schema

    # -- /predict -----------------------------------------------------------------------
    def parse_predict(self, body: bytes) -> list[dict[str, Any]]:
        head = body.lstrip()[:1]
        try:
            if head == b"[":
                records = self.records.validate_json(body)
            elif head == b"{":
                records = [self.record.validate_json(body)]
            else:
                raise RequestError(400, "body is not JSON: expected a record object or a list")
        except ValidationError as exc:
            raise validation_error(exc, batch=head == b"[") from None
        return self.check_size(records)

    def check_size(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not records:
            raise RequestError(
                422,
                "empty batch: send at least one record",
                [{"record": None, "field": None, "type": "too_short", "message": "empty batch"}],
            )
        if len(records) > self.max_batch:
            raise RequestError(
                413, f"batch of {len(records)} records is over the maximum of {self.max_batch}"
            )
        return records

    # -- /invocations (MLflow scoring-server formats) --------------------------------------
    def parse_mlflow(self, doc: Any) -> list[dict[str, Any]]:
        """Records from MLflow's request formats. As in MLflow's server, NaN means missing."""
        if not isinstance(doc, dict):
            raise RequestError(
                422, f"expected a JSON object with one of {', '.join(MLFLOW_FORMATS)}"
            )
        keys = [k for k in MLFLOW_FORMATS if k in doc]
        if len(keys) != 1:
            raise RequestError(
                422, f"expected exactly one of {', '.join(MLFLOW_FORMATS)}, got {sorted(doc)[:5]}"
            )
        key = keys[0]
        payload = doc[key]
        if key == "dataframe_split":
            if not isinstance(payload, dict) or not isinstance(payload.get("columns"), list):
                raise RequestError(422, "dataframe_split needs 'columns' (list) and 'data'")
            cols, rows = payload["columns"], payload.get("data")
            if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
                raise RequestError(422, "dataframe_split 'data' must be a list of rows (lists)")
            if not all(isinstance(c, str) for c in cols):
                raise RequestError(422, "dataframe_split 'columns' must be strings")
            for i, row in enumerate(rows):
                if len(row) != len(cols):
                    raise RequestError(
                        422,
                        f"record {i}: {len(row)} values for {len(cols)} columns",
                        [{"record": i, "field": None, "type": "row_length", "message": "length"}],
                    )
            raw: Any = [dict(zip(cols, row, strict=True)) for row in rows]
        elif isinstance(payload, dict) and key in ("inputs", "instances"):
            # column-oriented: {"col": [v0, v1, ...], ...}
            columns = list(payload.values())
            if not all(isinstance(v, list) for v in columns):
                raise RequestError(422, f"'{key}' as an object must map columns to lists")
            n = len(columns[0]) if columns else 0
            if any(len(v) != n for v in columns):
                raise RequestError(422, f"'{key}' columns have different lengths")
            raw = [{c: payload[c][i] for c in payload} for i in range(n)]
        else:
            raw = payload
        if not isinstance(raw, list):
            raise RequestError(422, f"'{key}' must be a list of records")
        # MLflow's pandas semantics: NaN is a missing value (null); Infinity stays an error.
        raw = [
            {k: None if v != v else v for k, v in r.items()} if isinstance(r, dict) else r
            for r in raw
        ]
        try:
            records = self.records.validate_python(raw)
        except ValidationError as exc:
            raise validation_error(exc, batch=True) from None
        return self.check_size(records)


def validation_error(exc: ValidationError, *, batch: bool) -> RequestError:
    errors = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        if err["type"] == "json_invalid":
            return RequestError(400, f"body is not valid JSON: {err['msg']}")
        loc = list(err["loc"])
        record = loc.pop(0) if batch and loc and isinstance(loc[0], int) else (None if batch else 0)
        field = str(loc[0]) if loc else None
        errors.append(
            {"record": record, "field": field, "type": err["type"], "message": err["msg"]}
        )
    first = errors[0]
    where = []
    if first["record"] is not None:
        where.append(f"record {first['record']}")
    if first["field"] is not None:
        where.append(f"field '{first['field']}'")
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return RequestError(422, f"{', '.join(where) or 'body'}: {first['message']}{more}", errors)
