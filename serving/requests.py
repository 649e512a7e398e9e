"""Request bodies to validated batches: /predict's typed records and MLflow's formats.

No body can cost more than a bounded multiple of a maximum valid batch:
1. before anything is parsed, the values in the body are counted (commas outside strings, at C
   speed): more than a full batch of MAX_BATCH_SIZE records can hold is a 413, whatever else the
   body holds. So `[{}, {}, ...]` in 4 MiB is refused before 1.4 M dicts are built;
2. then the JSON is parsed: into the signature's types when every value has its column's plain
   type (serving.decoders: checked while parsed, the common valid request's way), else by orjson
   (pydantic-core's parser for NaN/Infinity literals, as in MLflow's server); the number of
   records is checked before any record is validated;
3. records are validated one by one (pydantic-core validators built from the signature), and
   only the first MAX_ERRORS errors are kept; the rest are counted and reported as omitted.

/predict is strict (finite numbers, exact field names, null only where the model takes one);
/invocations follows MLflow's scoring server: extra columns are ignored, numbers coerce the way
pandas' cast to the column's type does (a double column's values are floats, an integer column's
ints), NaN means missing, and errors are MLflow's 400 `{error_code, message}`.
"""

from __future__ import annotations

import csv
import io
import itertools
import operator
import re
from typing import Any

import numpy as np
import orjson
import pydantic_core
from pydantic_core import SchemaValidator, ValidationError, core_schema

from serving.decoders import NUMBER, TypedDecoders, as_table
from serving.predictors import Batch
from serving.spec import Column, ServingSpec

MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
# A double/float column's (or a tensor's) numbers, on both endpoints: finite and within this
# magnitude (stated in the OpenAPI schema). Beyond it a scaled feature can overflow a model; within
# it every integer is exact in a double (1e15 < 2**53). MLflow takes any double: here, on purpose,
# this server is stricter. A long/integer column instead takes its type's whole range (INT64,
# INT32), as ints, exact: MLflow casts such a column to int64/int32.
MAX_ABS_NUMBER = 1e15
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # a JSON string, escapes too


class RequestError(Exception):
    """A client mistake: status, one-line message, the first errors and how many were left out.
    `code` is MLflow's error code for /invocations (BAD_REQUEST or INVALID_PARAMETER_VALUE)."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        omitted: int = 0,
        code: str = "BAD_REQUEST",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.errors = errors or []
        self.omitted = omitted


# A number in a string, as pandas' astype(float) reads it (MLflow's coercion for a double), within
# MAX_ABS_NUMBER: at most 15 digits before the point, no exponent.
NUMERIC_STRING = r"^[-+]?([0-9]{1,15}(\.[0-9]*)?|\.[0-9]+)$"


def _mlflow_number() -> core_schema.CoreSchema:
    """A double on /invocations: a number, a boolean, or a number in a string (MLflow's pandas
    coercions; the OpenAPI schema states exactly these)."""
    bound = MAX_ABS_NUMBER
    lax_float = core_schema.float_schema(strict=False, ge=-bound, le=bound)
    return core_schema.union_schema(
        [
            core_schema.float_schema(strict=True, ge=-bound, le=bound),
            core_schema.chain_schema([core_schema.bool_schema(strict=True), lax_float]),
            core_schema.chain_schema(
                [core_schema.str_schema(strict=True, pattern=NUMERIC_STRING), lax_float]
            ),
        ],
        mode="left_to_right",
    )


def _mlflow_integer(lo: int, hi: int) -> core_schema.CoreSchema:
    """A long/integer on /invocations, an int as MLflow's cast of the column (pandas'
    astype(int64/int32)) gives it: an integer within [lo, hi] as it is, exact, or what
    _mlflow_number takes (a number within MAX_ABS_NUMBER, a boolean, a numeric string) truncated
    toward zero, as astype truncates (2.5 -> 2, true -> 1), then within [lo, hi]."""
    in_range = core_schema.int_schema(strict=True, ge=lo, le=hi)
    to_int = core_schema.no_info_plain_validator_function(int)
    return core_schema.union_schema(
        [in_range, core_schema.chain_schema([_mlflow_number(), to_int, in_range])],
        mode="left_to_right",
    )


def _mlflow_string() -> core_schema.CoreSchema:
    """A string on /invocations: any scalar (pandas keeps an object column as it is)."""
    to_str = core_schema.no_info_plain_validator_function(str)
    return core_schema.union_schema(
        [
            core_schema.str_schema(strict=True),
            core_schema.chain_schema([core_schema.bool_schema(strict=True), to_str]),
            core_schema.chain_schema([core_schema.float_schema(strict=True), to_str]),
        ],
        mode="left_to_right",
    )


def _scalar(col: Column, *, mlflow: bool) -> core_schema.CoreSchema:
    """The validator of one field: strict on /predict, MLflow's (pandas') coercions on
    /invocations (ints, booleans and numeric strings for doubles, and as ints for integers; any
    scalar for strings)."""
    strict = not mlflow
    if mlflow and col.type in ("double", "float"):
        schema: core_schema.CoreSchema = _mlflow_number()
    elif mlflow and col.type in ("long", "integer"):
        schema = _mlflow_integer(*(INT64 if col.type == "long" else INT32))
    elif mlflow and col.type == "string":
        schema = _mlflow_string()
    elif col.type in ("double", "float"):
        schema = _number(mlflow)
    elif col.type in ("long", "integer"):
        # an integer, or a number with no fractional part (JSON Schema's integer: 3.0 is one)
        lo, hi = INT64 if col.type == "long" else INT32
        schema = core_schema.union_schema(
            [
                core_schema.int_schema(strict=True, ge=lo, le=hi),
                core_schema.chain_schema(
                    [core_schema.float_schema(strict=True), core_schema.int_schema(ge=lo, le=hi)]
                ),
            ],
            mode="left_to_right",
        )
    elif col.type == "boolean":
        schema = core_schema.bool_schema(strict=strict)
    else:
        schema = core_schema.str_schema(strict=True)
    # MLflow: a null in an integer column cannot be cast to int64 (400); elsewhere it is NaN
    nullable = col.nullable and not (mlflow and col.type in ("long", "integer"))
    return core_schema.nullable_schema(schema) if nullable else schema


def _number(mlflow: bool) -> core_schema.CoreSchema:
    if mlflow:
        return core_schema.float_schema(strict=False, allow_inf_nan=True)
    bound = MAX_ABS_NUMBER
    return core_schema.float_schema(strict=True, allow_inf_nan=False, ge=-bound, le=bound)


def _record_schema(columns: list[Column], *, mlflow: bool) -> core_schema.CoreSchema:
    fields = {}
    for col in columns:
        schema = _scalar(col, mlflow=mlflow)
        if mlflow or not col.required:  # an absent column is a null (pandas: NaN)
            schema = core_schema.with_default_schema(schema, default=None, validate_default=True)
        fields[col.name] = core_schema.typed_dict_field(
            schema, required=not mlflow and col.required
        )
    extra = "ignore" if mlflow else "forbid"
    return core_schema.typed_dict_schema(fields, extra_behavior=extra, total=False)


def _row_schema(spec: ServingSpec, *, mlflow: bool) -> core_schema.CoreSchema:
    item = _mlflow_number() if mlflow else _number(mlflow)
    if spec.tensor_nullable:
        item = core_schema.nullable_schema(item)
    width = spec.tensor_width
    return core_schema.list_schema(item, min_length=width, max_length=width)


class Validators:
    """One record's validator, and the whole batch's (one call into pydantic-core)."""

    def __init__(self, schema: core_schema.CoreSchema) -> None:
        self.one = SchemaValidator(schema)
        self.many = SchemaValidator(core_schema.list_schema(schema))


class RequestParser:
    def __init__(self, spec: ServingSpec, max_batch: int, max_errors: int = 10) -> None:
        self.spec = spec
        self.max_batch = max_batch
        self.max_errors = max_errors
        self.columns = spec.columns
        self.names = spec.input_names
        self.getter = operator.itemgetter(*self.names) if self.names else None
        width = len(self.names) if self.columns else (spec.tensor_width or 1)
        # commas in a valid body: at most (width + 1) per record, plus dataframe_split's header
        self.max_values = max_batch * (width + 1) + width + 64
        self.typed = TypedDecoders.for_columns(self.columns)
        if self.columns is not None:
            self.strict = Validators(_record_schema(self.columns, mlflow=False))
            self.lax = Validators(_record_schema(self.columns, mlflow=True))
        else:
            self.strict = Validators(_row_schema(spec, mlflow=False))
            self.lax = Validators(_row_schema(spec, mlflow=True))

    # -- shared steps ---------------------------------------------------------------------
    def _check_value_count(self, body: bytes) -> None:
        # All commas are an upper bound of the values; only above the limit are the commas in
        # strings told apart (a regex pass, ~0.1 s for 4 MiB).
        # (valid JSON under 2 x max_values bytes cannot hold that many values: no scan at all)
        if (
            len(body) >= 2 * self.max_values
            and _commas(body) >= self.max_values
            and (_STRINGS.sub(b"", body).count(b",") >= self.max_values)
        ):
            raise RequestError(
                422, f"too many values for a batch of at most {self.max_batch} records"
            )

    def _parse_json(self, body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # NaN / Infinity literals (MLflow's JSON has them), or not JSON at all
        try:
            return pydantic_core.from_json(body, allow_inf_nan=True)
        except ValueError as exc:
            raise RequestError(400, f"body is not valid JSON: {exc}") from None

    def _check_size(self, records: list[Any]) -> None:
        if not records:
            raise RequestError(
                422,
                "empty batch: send at least one record",
                [{"record": None, "field": None, "type": "too_short", "message": "empty batch"}],
                code="INVALID_PARAMETER_VALUE",
            )
        if len(records) > self.max_batch:  # 422: the schema's maxItems, not the body's bytes
            raise RequestError(
                422, f"batch of {len(records)} records is over the maximum of {self.max_batch}"
            )

    def _validate(self, items: list[Any], validators: Validators, status: int) -> list[Any]:
        """The whole batch in one call; when it fails, record by record, keeping the first
        max_errors errors (module docstring)."""
        try:
            return validators.many.validate_python(items)
        except ValidationError:
            pass
        validator = validators.one
        out: list[Any] = []
        errors: list[dict[str, Any]] = []
        total = 0
        for i, item in enumerate(items):
            try:
                out.append(validator.validate_python(item))
            except ValidationError as exc:
                total += exc.error_count()
                if len(errors) < self.max_errors:
                    errors += self._errors(exc, i)[: self.max_errors - len(errors)]
        if errors:
            first = errors[0]
            where = [f"record {first['record']}"]
            if first["field"] is not None:
                where.append(f"field '{first['field']}'")
            more = f" (+{total - 1} more errors)" if total > 1 else ""
            raise RequestError(
                status, f"{', '.join(where)}: {first['message']}{more}", errors, total - len(errors)
            )
        return out

    def _errors(self, exc: ValidationError, record: int) -> list[dict[str, Any]]:
        # never the input value: it may be a NaN or a huge string
        out = []
        for err in exc.errors(include_url=False, include_context=False, include_input=False):
            loc = err["loc"]
            field = (f"[{loc[0]}]" if isinstance(loc[0], int) else str(loc[0])) if loc else None
            message = err["msg"]
            if err["type"] == "none_required" or (err["type"].endswith("_type") and field):
                message = message.replace("Input should", "value should")
            out.append({"record": record, "field": field, "type": err["type"], "message": message})
        return out

    def _fast_rows(
        self, rows: list[Any], *, mlflow: bool, body: bytes | None = None
    ) -> Batch | None:
        """A tensor batch as one array when it is one already (plain numbers, full rows, within
        range); None sends it through the validators. NaN is a missing value on /invocations.
        `body`: the JSON the rows came from; without a `t` or an `f` in it (the common case:
        numbers hold neither) they hold no boolean, and the value-by-value scan is skipped."""
        if self.columns is not None:
            return None
        maybe_bools = body is None or b"t" in body or b"f" in body  # memchr: microseconds
        if not mlflow and maybe_bools and bool in set(map(type, itertools.chain(*rows))):
            return None  # numpy would take True as 1: /predict refuses it
        try:
            array = np.array(rows)
        except (ValueError, OverflowError):
            return None
        if array.dtype.kind not in "fi" or array.shape != (len(rows), self.spec.tensor_width):
            return None  # bools, strings, nulls (object), ragged rows: the validators say why
        numbers = array.astype(np.float64)
        finite = np.isfinite(numbers)
        if not finite.all():
            if not (mlflow and self.spec.tensor_nullable) or np.isinf(numbers).any():
                return None
        if np.abs(numbers[finite]).max(initial=0.0) > MAX_ABS_NUMBER:
            return None
        return Batch(size=len(rows), rows=numbers)

    def _fast_columns(self, records: list[Any], *, mlflow: bool) -> Batch | None:
        """The batch as columns when every value already has its column's plain type (the
        common case), checked at C speed; None sends the batch through the validators, which
        accept and refuse exactly the same (and say why)."""
        if self.columns is None or not all(type(r) is dict for r in records):
            return None
        if not mlflow and set(map(len, records)) != {len(self.names)}:
            return None  # with every name present (below), exactly the signature's fields
        try:
            if len(self.names) == 1:
                table = [tuple(map(self.getter, records))]
            else:
                table = list(zip(*map(self.getter, records), strict=True))  # transposed, in C
        except KeyError:
            return None
        return self._typed_columns(table, len(records), nan_is_null=mlflow)

    def _fast_split(self, payload: Any) -> Batch | None:
        """dataframe_split's rows straight to columns (no record dicts) when they are plain:
        every model column named once, full rows, a batch within its size; None sends the
        payload the long way, which says what is wrong with it."""
        if self.columns is None or not isinstance(payload, dict):
            return None
        cols, rows = payload.get("columns"), payload.get("data")
        if not (
            isinstance(cols, list) and isinstance(rows, list) and 0 < len(rows) <= self.max_batch
        ):
            return None
        if len(set(cols)) != len(cols) or not all(type(c) is str for c in cols):
            return None
        if not all(type(r) is list for r in rows) or set(map(len, rows)) != {len(cols)}:
            return None
        position = {c: i for i, c in enumerate(cols)}
        if any(n not in position for n in self.names):
            return None
        table = list(zip(*rows, strict=True))
        table = [table[position[n]] for n in self.names]
        return self._typed_columns(table, len(rows), nan_is_null=True)

    def _typed_columns(
        self, table: list[tuple[Any, ...]], size: int, *, nan_is_null: bool
    ) -> Batch | None:
        """Columns whose values all have the column's plain type, or None. Number columns with
        no nulls are checked together as one float64 block (one conversion, one range check:
        most of a wide numeric batch's cost), the others one by one. With `nan_is_null`
        (/invocations: MLflow's NaN is a missing value) a NaN counts as a null."""
        columns: dict[str, Any] = {}
        numbers = [
            i for i, col in enumerate(self.columns) if col.type in NUMBER and None not in table[i]
        ]
        block = [table[i] for i in numbers]
        if block and set(map(type, itertools.chain.from_iterable(block))) <= {float, int}:
            try:
                array = np.array(block, dtype=np.float64)
            except OverflowError:
                return None
            if not self._plain_numbers(array, [self.columns[i] for i in numbers], 0, nan_is_null):
                return None
            columns = {self.names[i]: array[j] for j, i in enumerate(numbers)}
        for col, values in zip(self.columns, table, strict=True):
            if col.name in columns:
                continue
            kinds = set(map(type, values))
            nulls = values.count(None) if type(None) in kinds else 0
            if nulls and not (col.nullable and col.type not in ("long", "integer")):
                return None
            kinds.discard(type(None))
            if col.type in NUMBER:
                if not kinds <= {float, int}:
                    return None
                try:
                    numbers = np.array([values], dtype=np.float64)  # a null is a NaN
                except OverflowError:
                    return None
                if not self._plain_numbers(numbers, [col], nulls, nan_is_null):
                    return None
            elif col.type in ("long", "integer"):
                lo, hi = INT64 if col.type == "long" else INT32
                if kinds != {int} or min(values) < lo or max(values) > hi:
                    return None
            elif kinds != {"string": {str}, "boolean": {bool}}.get(col.type) and kinds:
                return None
            columns[col.name] = values
        return Batch(size=size, columns={n: columns[n] for n in self.names})

    @classmethod
    def _plain_numbers(
        cls, array: np.ndarray, columns: list[Column], nulls: int, nan_is_null: bool
    ) -> bool:
        """Rows of `array` are `columns`' values, their `nulls` nulls as NaN: no infinity, none
        out of range, and a NaN only as a null (with `nan_is_null`: only where one may be)."""
        missing = np.isnan(array)
        if nan_is_null:
            nullable = np.array([c.nullable for c in columns])
            if (missing.any(axis=1) & ~nullable).any():
                return False
        elif int(np.count_nonzero(missing)) != nulls:  # a NaN literal (/predict refuses it)
            return False
        return cls._in_range(array)  # an infinity is out of range too

    def _decoded_columns(self, table: list[tuple[Any, ...]], size: int) -> Batch | None:
        """Columns of typed-decoded records (serving.decoders: every value has its column's
        plain type, null only where allowed), or None when a value is out of range. The number
        columns become one float64 block, a null a NaN."""
        columns: dict[str, Any] = {}
        numbers = [i for i, col in enumerate(self.columns) if col.type in NUMBER]
        if numbers:
            block = np.array([table[i] for i in numbers], dtype=np.float64)
            if not self._in_range(block):
                return None
            columns = {self.names[i]: block[j] for j, i in enumerate(numbers)}
        for col, values in zip(self.columns, table, strict=True):
            if col.name in columns:
                continue
            if col.type in ("long", "integer"):
                lo, hi = INT64 if col.type == "long" else INT32
                if min(values) < lo or max(values) > hi:
                    return None
            columns[col.name] = values
        return Batch(size=size, columns={n: columns[n] for n in self.names})

    def _numeric_split(self, columns: list[str], rows: list[list[Any]]) -> Batch | None:
        """A numeric signature's dataframe_split as one float64 array (no per-value work in
        Python), or None: a column missing or twice, ragged rows, a null where the model takes
        none, a value out of range."""
        position = {c: i for i, c in enumerate(columns)}
        if len(position) != len(columns) or any(n not in position for n in self.names):
            return None
        try:
            matrix = np.array(rows, dtype=np.float64)  # null -> NaN
        except ValueError:  # ragged
            return None
        if matrix.shape != (len(rows), len(columns)):
            return None
        block = matrix[:, [position[n] for n in self.names]].T
        if not self._plain_numbers(block, self.columns, 0, nan_is_null=True):
            return None
        return Batch(size=len(rows), columns=dict(zip(self.names, block, strict=True)))

    @staticmethod
    def _in_range(block: np.ndarray) -> bool:
        return not (np.abs(block) > MAX_ABS_NUMBER).any()  # a NaN (a null) is not over it

    def _typed_invocation(self, body: bytes) -> Batch | None:
        decoded = self.typed.invocation(body) if self.typed else None
        if decoded is None:
            return None
        key, payload = decoded
        if key == "records":
            self._check_size(payload)
            return self._decoded_columns(as_table(payload), len(payload))
        self._check_size(payload.data)
        if self.typed.numeric:
            return self._numeric_split(payload.columns, payload.data)
        return self._fast_split({"columns": payload.columns, "data": payload.data})

    def batch(self, records: list[Any]) -> Batch:
        if self.columns is None:
            return Batch(size=len(records), rows=records)
        return Batch(
            size=len(records), columns={n: [r.get(n) for r in records] for n in self.names}
        )

    # -- /predict -------------------------------------------------------------------------
    def predict(self, body: bytes) -> Batch:
        self._check_value_count(body)
        if self.typed and (records := self.typed.predict(body)) is not None:
            self._check_size(records)
            if (fast := self._decoded_columns(as_table(records), len(records))) is not None:
                return fast
        doc = self._parse_json(body)
        if self.columns is None:
            rows = doc if isinstance(doc, list) and doc and isinstance(doc[0], list) else [doc]
            if isinstance(doc, list) and not doc:
                rows = []
        elif isinstance(doc, dict):
            rows = [doc]
        elif isinstance(doc, list):
            rows = doc
        else:
            raise RequestError(400, "expected a record (JSON object) or a list of records")
        self._check_size(rows)
        fast = self._fast_rows(rows, mlflow=False, body=body)
        fast = fast or self._fast_columns(rows, mlflow=False)
        return fast or self.batch(self._validate(rows, self.strict, 422))

    # -- /invocations: MLflow's formats ---------------------------------------------------------
    def invocations(self, body: bytes) -> Batch:
        self._check_value_count(body)
        if (fast := self._typed_invocation(body)) is not None:
            return fast
        doc = self._parse_json(body)
        if not isinstance(doc, dict):
            kind = "a list" if isinstance(doc, list) else type(doc).__name__
            raise RequestError(
                400,
                f"the input must be a JSON object with exactly one of {MLFLOW_FORMATS}, got {kind}",
            )
        keys = [k for k in MLFLOW_FORMATS if k in doc]
        if len(keys) != 1:
            raise RequestError(
                400,
                f"the input must be a JSON object with exactly one of {MLFLOW_FORMATS}; "
                f"got {len(keys)}",
            )
        key, payload = keys[0], doc[keys[0]]
        if key == "dataframe_split" and (fast := self._fast_split(payload)) is not None:
            return fast
        if self.columns is None:
            rows = self._tensor_rows(key, payload)
        else:
            rows = self._records(key, payload)
        self._check_size(rows)
        if self.columns is not None:
            self._check_columns(rows)
        fast = self._fast_rows(rows, mlflow=True) or self._fast_columns(rows, mlflow=True)
        if fast is not None:
            return fast
        rows = [_nan_to_none(r) for r in rows]
        return self.batch(self._validate(rows, self.lax, 400))

    def _records(self, key: str, payload: Any) -> list[Any]:
        if key == "dataframe_split":
            if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
                raise RequestError(
                    400, "dataframe_split needs 'columns' and 'data' (a list of rows)"
                )
            cols = payload.get("columns")
            rows = payload["data"]
            if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
                raise RequestError(
                    400,
                    f"dataframe_split 'columns' must list the model's columns {self.names}",
                    code="INVALID_PARAMETER_VALUE",
                )
            if len(set(cols)) != len(cols):
                dup = sorted({c for c in cols if cols.count(c) > 1})
                raise RequestError(
                    400,
                    f"dataframe_split has duplicate columns {dup}",
                    code="INVALID_PARAMETER_VALUE",
                )
            for i, row in enumerate(rows):
                if not isinstance(row, list) or len(row) != len(cols):
                    raise RequestError(
                        400, f"dataframe_split row {i} does not have {len(cols)} values"
                    )
            return [dict(zip(cols, row, strict=True)) for row in rows]
        if isinstance(payload, dict) and key in ("inputs", "instances"):
            # column-oriented: {"col": [v0, v1, ...], ...}; other keys are ignored, as in MLflow
            columns = {k: v for k, v in payload.items() if k in self.names}
            if not all(isinstance(v, list) for v in columns.values()):
                raise RequestError(400, f"'{key}' as an object must map columns to lists")
            n = len(next(iter(columns.values()))) if columns else 0
            if any(len(v) != n for v in columns.values()):
                raise RequestError(
                    400, f"'{key}' columns have different lengths", code="INVALID_PARAMETER_VALUE"
                )
            return [{c: v[i] for c, v in columns.items()} for i in range(n)]
        if not isinstance(payload, list):
            code = "BAD_REQUEST" if key == "dataframe_records" else "INVALID_PARAMETER_VALUE"
            raise RequestError(400, f"'{key}' must be a list of records", code=code)
        if not all(isinstance(r, dict) for r in payload):
            raise RequestError(
                400, f"'{key}' must be a list of records (objects)", code="INVALID_PARAMETER_VALUE"
            )
        return payload

    def _check_columns(self, records: list[dict[str, Any]]) -> None:
        present: set[str] = set()
        for rec in records:
            present.update(rec)
        missing = [c.name for c in self.columns or [] if c.required and c.name not in present]
        if missing:
            raise RequestError(
                400, f"Model is missing inputs {missing}", code="INVALID_PARAMETER_VALUE"
            )

    def _tensor_rows(self, key: str, payload: Any) -> list[Any]:
        if key == "dataframe_split" and isinstance(payload, dict):
            payload = payload.get("data")
        elif key == "dataframe_records" and isinstance(payload, list):
            payload = [list(r.values()) if isinstance(r, dict) else r for r in payload]
        if not isinstance(payload, list) or not all(isinstance(r, list) for r in payload):
            raise RequestError(
                400,
                f"'{key}' must be a list of rows of {self.spec.tensor_width} numbers",
                code="INVALID_PARAMETER_VALUE",
            )
        return payload

    # -- text/csv -------------------------------------------------------------------------
    def csv(self, body: bytes) -> Batch:
        if body.count(b",") + body.count(b"\n") >= self.max_values:
            raise RequestError(422, f"too many values for a batch of at most {self.max_batch}")
        try:
            lines = list(csv.reader(io.StringIO(body.decode("utf-8"))))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise RequestError(400, f"body is not UTF-8 CSV: {exc}") from None
        if not lines:
            raise RequestError(400, "empty CSV: expected a header row and records")
        header, rows = lines[0], [r for r in lines[1:] if r]
        if any(len(r) != len(header) for r in rows):
            raise RequestError(400, f"CSV rows must have the header's {len(header)} fields")
        self._check_size(rows)
        if self.columns is None:
            items: list[Any] = [[_csv_value(v) for v in r] for r in rows]
        else:
            items = [{h: _csv_value(v) for h, v in zip(header, r, strict=True)} for r in rows]
            self._check_columns(items)
        return self.batch(self._validate(items, self.lax, 400))


def _commas(body: bytes) -> int:
    """bytes.count, vectorized: a tenth of its time on a 1000-record body (0.01 against 0.1 ms)."""
    return int(np.count_nonzero(np.frombuffer(body, dtype=np.uint8) == ord(",")))


def _nan_to_none(row: Any) -> Any:
    """MLflow's pandas semantics: NaN is a missing value."""
    if isinstance(row, dict):
        return {k: None if v != v else v for k, v in row.items()}
    if isinstance(row, list):
        return [None if v != v else v for v in row]
    return row


def _csv_value(text: str) -> Any:
    """An empty field is missing (pandas' read_csv); the lax validator parses the rest."""
    return None if text == "" else text
