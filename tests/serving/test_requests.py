"""serving.requests: the fast column path accepts exactly what the validators accept, with the
same values; the value count refuses amplifying bodies before they are parsed."""

from __future__ import annotations

import math

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


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    overrides=st.lists(
        st.dictionaries(st.sampled_from(FEATURES), VALUES, max_size=3), min_size=1, max_size=4
    ),
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
