"""serving.decoders: whether a body goes the typed way or the long way (orjson and the
validators) never changes the parser's outcome: the same batch, or the same error. Checked on
random bodies for the mixed-type fixture signature and for an all-numeric one (whose
dataframe_split becomes one float64 array, and whose NaN tokens are read as null)."""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.requests import RequestError, RequestParser
from serving.spec import Column, ServingSpec
from tests.serving.conftest import FEATURES, record
from tests.serving.test_requests import PROPERTY, VALUES

pytestmark = pytest.mark.unit

# A column named with "NaN" in it: a body with NaN tokens must still give the long way's answer.
NUMERIC_COLUMNS = [
    Column("mean radius (x)", "double"),
    Column("texture", "double", nullable=False),
    Column("NaN share", "float"),
]
NUMERIC_NAMES = [c.name for c in NUMERIC_COLUMNS]


def parsers(spec: ServingSpec) -> tuple[RequestParser, RequestParser]:
    """(the parser as served, the same parser with the typed decoders switched off)."""
    typed = RequestParser(spec, max_batch=20, max_errors=3)
    assert typed.typed is not None
    long_way = copy.copy(typed)
    long_way.typed = None
    return typed, long_way


@pytest.fixture(scope="module")
def mixed(load, model_dir):
    return parsers(load(model_dir).spec)


@pytest.fixture(scope="module")
def numeric():
    spec = ServingSpec(
        fingerprint="0",
        task="classification",
        classes=[0, 1],
        predict_fn="predict",
        columns=NUMERIC_COLUMNS,
    )
    return parsers(spec)


def outcome(parser: RequestParser, method: str, body: bytes):
    try:
        batch = getattr(parser, method)(body)
    except RequestError as exc:
        return ("error", exc.status, exc.message)
    columns = {}
    for name, values in batch.columns.items():
        plain = [v.item() if hasattr(v, "item") else v for v in values]
        columns[name] = [None if isinstance(v, float) and math.isnan(v) else v for v in plain]
    return ("batch", batch.size, columns)


def assert_same_outcome(pair, method: str, body: bytes) -> None:
    typed, long_way = (outcome(p, method, body) for p in pair)
    if typed[0] == "batch" and long_way[0] == "batch":  # 3 and 3.0 are the same number here
        assert typed[1] == long_way[1], body
        for name, values in typed[2].items():
            assert values == long_way[2][name], (name, body)
    else:
        assert typed == long_way, body


def dumps(doc) -> bytes:
    """JSON as Python writes it: NaN and Infinity literals included (MLflow's client does)."""
    return json.dumps(doc).encode()


# "NaN" as a category: a NaN token may only be read as null where no column is a string
OVERRIDES = st.lists(
    st.dictionaries(st.sampled_from(FEATURES), st.one_of(VALUES, st.just("NaN")), max_size=3),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, **PROPERTY)
@given(overrides=OVERRIDES, drop=st.sampled_from([None, *FEATURES]), lone=st.booleans())
def test_predict_outcome_is_the_long_ways(mixed, overrides, drop, lone):
    records = [record(**o) for o in overrides]
    if drop:
        del records[-1][drop]
    body = dumps(records[0] if lone else records)
    assert_same_outcome(mixed, "predict", body)


@settings(max_examples=300, **PROPERTY)
@given(
    overrides=OVERRIDES,
    order=st.permutations(FEATURES),
    shape=st.sampled_from(["split", "split+extra", "records", "records+extra", "two formats"]),
)
def test_invocations_outcome_is_the_long_ways(mixed, overrides, order, shape):
    records = [record(**o) for o in overrides]
    assert_same_outcome(mixed, "invocations", dumps(invocation(records, list(order), shape)))


NUMERIC_VALUES = st.one_of(
    st.floats(min_value=-1e16, max_value=1e16),
    st.integers(-(2**40), 2**40),
    st.none(),
    VALUES,
)


@settings(max_examples=400, **PROPERTY)
@given(
    rows=st.lists(
        st.fixed_dictionaries({n: NUMERIC_VALUES for n in NUMERIC_NAMES}), min_size=0, max_size=4
    ),
    order=st.permutations(NUMERIC_NAMES),
    shape=st.sampled_from(["split", "split+extra", "records", "records+extra", "two formats"]),
    method=st.sampled_from(["invocations", "predict"]),
)
def test_numeric_outcome_is_the_long_ways(numeric, rows, order, shape, method):
    body = dumps(invocation(rows, list(order), shape) if method == "invocations" else rows)
    assert_same_outcome(numeric, method, body)


def invocation(records: list[dict], order: list[str], shape: str) -> dict:
    if shape.startswith("split"):
        columns = [*order, "not a feature"] if shape.endswith("extra") else order
        data = [[r.get(c, 1.5) for c in columns] for r in records]
        return {"dataframe_split": {"columns": columns, "data": data}}
    if shape == "two formats":
        return {"dataframe_records": records, "inputs": records}
    if shape.endswith("extra"):
        records = [{**r, "not a feature": 1.5} for r in records]
    return {"dataframe_records": records, "params": {"ignored": True}}


def test_typed_paths_take_the_common_bodies(numeric, mixed):
    """The point of the typed decoders: valid bodies, nulls and MLflow's NaN included, take
    them (a test that both ways agree would also pass if the typed way took nothing)."""
    typed = numeric[0].typed
    split = {"columns": NUMERIC_NAMES, "data": [[None, 2.0, float("nan")], [1, 2.5, 3.0]]}
    assert typed.invocation(dumps({"dataframe_split": split})) is not None
    assert mixed[0].typed.predict(dumps([record(), record(contract=None)])) is not None
    body = dumps({"dataframe_records": [record(), record(region=None)]})
    assert mixed[0].typed.invocation(body) is not None


def test_nan_tokens_are_nulls_only_where_no_column_is_a_string(numeric, mixed):
    nan = float("nan")
    body = dumps({"dataframe_records": [record(contract="NaN", **{"monthly_charges (usd)": nan})]})
    assert_same_outcome(mixed, "invocations", body)
    assert mixed[0].typed.invocation(body) is None  # a string column: the long way reads NaN
    body = dumps({"dataframe_records": [dict(zip(NUMERIC_NAMES, [nan, 1.0, 2.0], strict=True))]})
    assert_same_outcome(numeric, "invocations", body)
    assert numeric[0].typed.invocation(body) is None  # "NaN share" would be renamed
    spec = ServingSpec("0", "regression", [], "predict", columns=NUMERIC_COLUMNS[:2])
    plain = parsers(spec)
    body = dumps({"dataframe_split": {"columns": NUMERIC_NAMES[:2], "data": [[nan, 1.0]]}})
    assert_same_outcome(plain, "invocations", body)
    assert plain[0].typed.invocation(body) is not None
