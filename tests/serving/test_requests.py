"""serving.requests: the fast column path accepts exactly what the validators accept, with the
same values; the value count refuses amplifying bodies before they are parsed."""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from serving.requests import RequestError, RequestParser
from serving.spec import Column
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


# Property runs: new examples every run, from a seed run_property prints (a failing test's
# captured output says how to replay it); nothing stored between runs.
PROPERTY = {
    "database": None,
    "print_blob": True,  # a failure also prints the @reproduce_failure of its shrunk example
    # timing is not what these tests check, and the machine's load varies (CI shares the host):
    # no per-example deadline, and no too_slow health check (the time to generate examples)
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
}


def run_property(
    request: pytest.FixtureRequest, check: Callable[..., None], max_examples: int, **strategies
) -> None:
    """Hypothesis-test `check` on `strategies` with PROPERTY's settings, from pytest's
    --hypothesis-seed if given, else a new seed each run, printed (shown when the test fails)."""
    option = request.config.getoption("--hypothesis-seed", default=None)
    value = int(option) if option is not None else secrets.randbits(64)
    print(f"Hypothesis seed {value}: pytest --hypothesis-seed={value} '{request.node.nodeid}'")
    test = given(**strategies)(check)
    seed(value)(settings(max_examples=max_examples, **PROPERTY)(test))()


NUMBER = ("double", "float")  # a batch may hold such a column as one float64 array


def column_values(
    col: Column, values: Sequence[Any]
) -> tuple[np.dtype | None, list[tuple[type, Any]]]:
    """A batch column as (its array's dtype or None, [(type, value)]): a bool, an int and a float
    differ even where they are equal (True == 1 == 1.0). Only two things are read as the same,
    both deliberate in serving.requests and both made float64 by every predictor, only in a
    number column (double/float): a NaN is a null (a null in a float64 column is a NaN), and a
    JSON integer is the float (a number column's coercion). Nothing else: an integer column
    (long/integer) holds ints on every path and endpoint, and a float there differs."""
    dtype = None
    if isinstance(values, np.ndarray):
        dtype = values.dtype
        assert col.type in NUMBER and dtype == np.float64, (col.name, dtype)
    out = []
    for v in values:
        v = v.item() if isinstance(v, np.generic) else v
        if col.type in NUMBER and type(v) is float and math.isnan(v):
            v = None
        elif col.type in NUMBER and type(v) is int:
            v = float(v)
        out.append((type(v), v))
    return dtype, out


def assert_same_column(col: Column, got: Any, want: Any, context: Any) -> None:
    """`got` holds what `want` holds, type for type (column_values), and when both are arrays,
    the same dtype."""
    (got_dtype, got_values), (want_dtype, want_values) = got, want
    assert got_values == want_values, (col.name, got_values, want_values, context)
    if got_dtype is not None and want_dtype is not None:
        assert got_dtype == want_dtype, (col.name, got_dtype, want_dtype, context)


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


def assert_same_columns(parser: RequestParser, fast, reference, records) -> None:
    """The fast path's columns hold what the validators give, type for type (column_values: a
    NaN where they give null, a float where they give a JSON integer, in a number column)."""
    assert reference is not None, records
    for col in parser.columns:
        got, want = fast.columns[col.name], reference[col.name]
        assert len(got) == len(want)
        assert_same_column(
            col,
            column_values(col, got),
            column_values(col, want),
            records,
        )


def test_fast_path_agrees_with_the_validators(request, parser):
    def check(overrides, drop, mlflow):
        records = [record(**o) for o in overrides]
        if drop:
            del records[-1][drop]
        fast = parser._fast_columns(records, mlflow=mlflow)
        reference = slow(parser, records, mlflow=mlflow)
        if fast is None:
            return  # the validators decide (and say why)
        assert_same_columns(parser, fast, reference, records)

    run_property(
        request,
        check,
        300,
        overrides=RECORD_OVERRIDES,
        drop=st.sampled_from([None, *FEATURES]),
        mlflow=st.booleans(),
    )


def test_fast_split_agrees_with_the_validators(request, parser):
    """dataframe_split's rows go straight to columns: the same values the validators give the
    same records, in any column order, an extra column ignored (MLflow's semantics)."""

    def check(overrides, order, extra):
        records = [record(**o) for o in overrides]
        columns = [*order, "not_a_feature"] if extra else list(order)
        rows = [[r.get(c, "ignored") for c in columns] for r in records]
        fast = parser._fast_split({"columns": columns, "data": rows})
        reference = slow(parser, records, mlflow=True)
        if fast is None:
            return  # the long way decides
        assert_same_columns(parser, fast, reference, records)

    run_property(
        request,
        check,
        200,
        overrides=RECORD_OVERRIDES,
        order=st.permutations(FEATURES),
        extra=st.booleans(),
    )


@pytest.mark.parametrize(
    "value, taken",
    [
        (10**15 + 1, True),
        (2**63 - 1, True),
        (-(2**63), True),
        (2**63, False),
        (-(2**63) - 1, False),
    ],
)
def test_an_integer_beyond_1e15_on_invocations_is_one_answer_either_way(parser, value, taken):
    """A long column (support_calls) on /invocations takes int64's whole range, as the int,
    exact (MLflow casts the column to int64), and nothing beyond it: on the fast column paths,
    in the validators, and whatever the rest of the batch (a numeric string for a double sends
    the whole batch through the validators)."""
    records = [record(support_calls=value)]
    split = {"columns": FEATURES, "data": [[r[c] for c in FEATURES] for r in records]}
    lax = [record(support_calls=value, **{"tenure months": "12.5"})]
    ways = {
        "fast columns": parser._fast_columns(records, mlflow=True),
        "fast split": parser._fast_split(split),
        "validators": slow(parser, records, mlflow=True),
        "invocations": invoke(parser, {"dataframe_records": records}),
        "invocations, the long way": invoke(parser, {"dataframe_records": lax}),
    }
    for way, columns in ways.items():
        columns = getattr(columns, "columns", columns)
        if not taken:
            assert columns is None, way
            continue
        assert columns is not None, way
        assert [(type(v), v) for v in columns["support_calls"]] == [(int, value)], way


def invoke(parser: RequestParser, doc: Any):
    """/invocations' batch of `doc`, or None for a 400."""
    try:
        return parser.invocations(json.dumps(doc).encode())
    except RequestError as exc:
        assert exc.status == 400, exc.message
        return None


@pytest.mark.parametrize(
    "value, expected",
    [(2.0, 2), (2.5, 2), (-2.5, -2), (1e15, 10**15), (True, 1), ("3", 3)],
)
def test_a_long_column_coerces_to_ints_on_invocations(parser, value, expected):
    """What MLflow's coercions take for a number, in a long column: an int, truncated toward zero
    as MLflow's cast to int64 (pandas' astype) truncates."""
    batch = invoke(parser, {"dataframe_records": [record(support_calls=value)]})
    assert batch is not None
    assert [(type(v), v) for v in batch.columns["support_calls"]] == [(int, expected)]


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


def test_fast_rows_agree_with_the_validators(request, tensor_parser):
    def check(rows, mlflow):
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
        assert fast.rows.dtype == np.float64, fast.rows.dtype
        expected = [[math.nan if v is None else float(v) for v in r] for r in reference]
        assert fast.rows.tolist() == expected or all(
            (a == b) or (math.isnan(a) and math.isnan(b))
            for ra, rb in zip(fast.rows.tolist(), expected, strict=True)
            for a, b in zip(ra, rb, strict=True)
        )

    rows = st.lists(st.lists(MOSTLY_NUMBERS, min_size=9, max_size=11), min_size=1, max_size=4)
    run_property(request, check, 200, rows=rows, mlflow=st.booleans())


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
