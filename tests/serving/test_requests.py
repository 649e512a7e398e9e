"""serving.requests: the fast column path accepts exactly what the validators accept, with the
same values; the value count refuses amplifying bodies before they are parsed."""

from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.requests import RequestError, RequestParser
from tests.serving.conftest import FEATURES, record

pytestmark = pytest.mark.unit

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e15, -1e15, 1e16, 2.5, 3.0, "monthly", "north", "3", ""]),
)


NUMBERS = st.one_of(st.floats(min_value=-1e16, max_value=1e16), st.integers(-(2**40), 2**40))
MOSTLY_NUMBERS = st.one_of(NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS, NUMBERS, VALUES)


# Deterministic property runs (the same examples every time, nothing stored between runs).
PROPERTY = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": list(HealthCheck),
}
RECORD_OVERRIDES = st.lists(
    st.dictionaries(st.sampled_from(FEATURES), VALUES, max_size=3), min_size=1, max_size=4
)


@pytest.fixture(scope="module")
def parser(load, model_dir) -> RequestParser:
    return RequestParser(load(model_dir).spec, max_batch=50, max_errors=3)


def slow(parser: RequestParser, records, *, mlflow: bool):
    if mlflow:
        records = [{k: None if v != v else v for k, v in r.items()} for r in records]
    validators = parser.lax if mlflow else parser.strict
    try:
        return parser.batch(parser._validate(records, validators, 400)).columns
    except RequestError:
        return None


def assert_same_columns(fast, reference, records) -> None:
    """The fast path's columns hold what the validators give (a NaN where they give null)."""
    assert reference is not None, records
    for name in FEATURES:
        got, want = list(fast.columns[name]), list(reference[name])
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert (
                a == b
                or (a is None and b is None)
                or (isinstance(a, float) and math.isnan(a) and b is None)
            ), (name, a, b)


@settings(max_examples=300, **PROPERTY)
@given(
    overrides=RECORD_OVERRIDES,
    drop=st.sampled_from([None, *FEATURES]),
    mlflow=st.booleans(),
)
def test_fast_path_agrees_with_the_validators(parser, overrides, drop, mlflow):
    records = [record(**o) for o in overrides]
    if drop:
        del records[-1][drop]
    fast = parser._fast_columns(records, mlflow=mlflow)
    reference = slow(parser, records, mlflow=mlflow)
    if fast is None:
        return  # the validators decide (and say why)
    assert_same_columns(fast, reference, records)


@settings(max_examples=200, **PROPERTY)
@given(
    overrides=RECORD_OVERRIDES,
    order=st.permutations(FEATURES),
    extra=st.booleans(),
)
def test_fast_split_agrees_with_the_validators(parser, overrides, order, extra):
    """dataframe_split's rows go straight to columns: the same values the validators give the
    same records, in any column order, an extra column ignored (MLflow's semantics)."""
    records = [record(**o) for o in overrides]
    columns = [*order, "not_a_feature"] if extra else list(order)
    rows = [[r.get(c, "ignored") for c in columns] for r in records]
    fast = parser._fast_split({"columns": columns, "data": rows})
    reference = slow(parser, records, mlflow=True)
    if fast is None:
        return  # the long way decides
    assert_same_columns(fast, reference, records)


def test_fast_split_takes_plain_rows_as_records_would_be(parser):
    records = [record(), record()]
    payload = {"columns": FEATURES, "data": [[r[c] for c in FEATURES] for r in records]}
    fast = parser._fast_split(payload)
    assert fast is not None and fast.size == 2
    via_records = parser.invocations(orjson.dumps({"dataframe_records": records}))
    for name in FEATURES:
        assert list(fast.columns[name]) == list(via_records.columns[name]), name


def test_nan_in_a_split_is_a_null_on_the_fast_path(parser):
    """MLflow's client writes a missing number as NaN: still the fast path, a null."""
    rows = [[r[c] for c in FEATURES] for r in [record(**{"monthly_charges (usd)": math.nan})]]
    fast = parser._fast_split({"columns": FEATURES, "data": rows})
    assert fast is not None and math.isnan(fast.columns["monthly_charges (usd)"][0])
    assert (
        parser._fast_columns([record(**{"monthly_charges (usd)": math.nan})], mlflow=False) is None
    )


@pytest.mark.parametrize(
    "payload",
    [
        {"columns": [*FEATURES, FEATURES[0]], "data": [[1] * (len(FEATURES) + 1)]},  # duplicate
        {"columns": FEATURES[1:], "data": [[1] * (len(FEATURES) - 1)]},  # a column missing
        {"columns": FEATURES, "data": [[1] * len(FEATURES), [1]]},  # a short row
        {"columns": FEATURES, "data": []},  # empty
        {"columns": FEATURES, "data": [[1] * len(FEATURES)] * 51},  # over max_batch
    ],
)
def test_fast_split_leaves_malformed_payloads_to_the_long_way(parser, payload):
    assert parser._fast_split(payload) is None
    with pytest.raises(RequestError) as err:
        parser.invocations(orjson.dumps({"dataframe_split": payload}))
    assert err.value.status in (400, 422)


@pytest.fixture(scope="module")
def tensor_parser(load, tensor_forest_dir) -> RequestParser:
    return RequestParser(load(tensor_forest_dir).spec, max_batch=50, max_errors=3)


@settings(max_examples=200, **PROPERTY)
@given(
    rows=st.lists(st.lists(MOSTLY_NUMBERS, min_size=9, max_size=11), min_size=1, max_size=4),
    mlflow=st.booleans(),
)
def test_fast_rows_agree_with_the_validators(tensor_parser, rows, mlflow):
    fast = tensor_parser._fast_rows(rows, mlflow=mlflow)
    # told the body (no `t`/`f` in it: no boolean scan), the same answer
    body = json.dumps(rows).encode()
    told = tensor_parser._fast_rows(rows, mlflow=mlflow, body=body)
    assert (told is None) == (fast is None), rows
    if fast is not None:
        np.testing.assert_array_equal(told.rows, fast.rows)
    if fast is None:  # declined: only what is not plain full rows of in-range numbers
        plain = all(len(r) == 10 for r in rows) and all(
            type(v) in (int, float) and abs(v) <= 1e15 for r in rows for v in r
        )
        assert not plain, rows
        return
    reference = slow_rows(tensor_parser, rows, mlflow=mlflow)
    assert reference is not None, rows
    expected = [[math.nan if v is None else float(v) for v in r] for r in reference]
    assert fast.rows.tolist() == expected or all(
        (a == b) or (math.isnan(a) and math.isnan(b))
        for ra, rb in zip(fast.rows.tolist(), expected, strict=True)
        for a, b in zip(ra, rb, strict=True)
    )


def test_a_boolean_in_a_tensor_row_is_no_number_on_predict(tensor_parser):
    rows = [[True] + [1.5] * 9]
    assert tensor_parser._fast_rows(rows, mlflow=False, body=json.dumps(rows).encode()) is None
    with pytest.raises(RequestError):
        tensor_parser.predict(json.dumps(rows).encode())


def slow_rows(parser: RequestParser, rows, *, mlflow: bool):
    if mlflow:
        rows = [[None if v != v else v for v in r] for r in rows]
    try:
        return parser._validate(rows, parser.lax if mlflow else parser.strict, 400)
    except RequestError:
        return None


def test_amplifying_bodies_are_refused_before_parsing(parser):
    limit = parser.max_values
    with pytest.raises(RequestError, match="too many values") as exc:
        parser.predict(b"[" + b"{}," * limit + b"{}]")
    assert exc.value.status == 422
    # commas inside strings are not values: a body of a few long strings passes the count
    text = "," * (limit + 10)
    with pytest.raises(RequestError) as exc:
        parser.predict(f'[{{"contract": "{text}"}}]'.encode())
    assert "too many values" not in exc.value.message
