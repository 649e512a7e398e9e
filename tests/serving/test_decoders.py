"""serving.decoders: whether a body goes the typed way or the long way (orjson and the
validators) never changes the parser's outcome: the same batch, type for type (a bool, an int and
a float differ), or the same error. Checked on random bodies for the mixed-type fixture
signature, an all-numeric one (whose dataframe_split becomes one float64 array, and whose NaN
tokens are read as null) and two with boolean columns (with and without a string column), on
/predict and /invocations. Most bodies are typical valid requests, the rest edge cases; and
since a test that both ways agree would also pass if the typed way took nothing, each property
test also counts the valid bodies the typed way took: at least 90% of them. Every pairing of a
column with a value of another type is tried as well (test_a_value_of_another_type_...)."""

from __future__ import annotations

import copy
import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import strategies as st

from serving.requests import RequestError, RequestParser
from serving.spec import Column, ServingSpec
from tests.serving.conftest import record
from tests.serving.test_requests import (
    NUMBER,
    VALUES,
    assert_same_column,
    column_values,
    run_property,
)

pytestmark = pytest.mark.unit

# A column named with "NaN" in it: a body with NaN tokens must still give the long way's answer.
NUMERIC_COLUMNS = [
    Column("mean radius (x)", "double"),
    Column("texture", "double", nullable=False),
    Column("NaN share", "float"),
]
NUMERIC_NAMES = [c.name for c in NUMERIC_COLUMNS]
# Booleans among numbers and a string: true/false only, never a number, for a boolean column.
FLAG_COLUMNS = [
    Column("is senior (y/n)", "boolean"),
    Column("paperless billing", "boolean", nullable=False),
    Column("tenure months", "long"),
    Column("dependents", "integer"),
    Column("monthly charges", "double", required=False),
    Column("plan", "string", categories=["basic", "premium"]),
]
FLAG_RECORD = {"is senior (y/n)": True, "paperless billing": False, "tenure months": 3}
FLAG_RECORD |= {"dependents": 0, "monthly charges": 1, "plan": "basic"}


class CountingParser(RequestParser):
    """The parser as served, noting whether a body went the long way: the long way starts by
    parsing the body into Python objects (RequestParser._parse_json), which the typed way, the
    body decoded straight into the signature's types, never does."""

    long_way = False

    def _parse_json(self, body: bytes) -> Any:
        self.long_way = True
        return super()._parse_json(body)


def spec_of(columns: list[Column]) -> ServingSpec:
    return ServingSpec("0", "classification", [0, 1], "predict", columns=columns)


def parsers(spec: ServingSpec) -> tuple[CountingParser, CountingParser]:
    """(the parser as served, the same parser with the typed decoders switched off)."""
    typed = CountingParser(spec, max_batch=20, max_errors=3)
    assert typed.typed is not None
    long_way = copy.copy(typed)
    long_way.typed = None
    return typed, long_way


@pytest.fixture(scope="module")
def mixed(load, model_dir):
    return parsers(load(model_dir).spec)


@pytest.fixture(scope="module")
def numeric():
    return parsers(spec_of(NUMERIC_COLUMNS))


def outcome(parser: CountingParser, method: str, body: bytes):
    """("error", status, message), or ("batch", size, {column: column_values})."""
    parser.long_way = False
    try:
        batch = getattr(parser, method)(body)
    except RequestError as exc:
        return ("error", exc.status, exc.message)
    assert list(batch.columns) == parser.names, body
    columns = {c.name: column_values(c, batch.columns[c.name]) for c in parser.columns}
    return ("batch", batch.size, columns)


@dataclass
class TypedShare:
    """The distinct valid bodies (the long way gives a batch) of a property test, and how many
    of them the typed way took (CountingParser). Hypothesis makes some bodies many times over:
    each counts once."""

    valid: int = 0
    typed: int = 0
    long_way: list[bytes] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)

    def add(self, body: bytes, *, typed: bool) -> None:
        if body in self.seen:
            return
        self.seen.add(body)
        self.valid += 1
        self.typed += typed
        if not typed:
            self.long_way.append(body)

    def check(self, least: int = 50, share: float = 0.9) -> None:
        taken = f"the typed way took {self.typed} of {self.valid} valid bodies"
        rate = self.typed / max(self.valid, 1)
        print(f"{taken} ({rate:.1%})")
        assert self.valid >= least, f"too few valid bodies to count: {taken}"
        assert self.typed >= share * self.valid, (
            f"{taken}, under {share:.0%}; the long way took e.g. {self.long_way[:3]}"
        )


def assert_same_outcome(pair, method: str, body: bytes, share: TypedShare | None = None):
    typed, long_way = pair
    got, want = outcome(typed, method, body), outcome(long_way, method, body)
    if got[0] == "batch" and want[0] == "batch":
        assert got[1] == want[1], body
        for col in typed.columns:
            assert_same_column(col, got[2][col.name], want[2][col.name], body)
    else:
        assert got == want, body
    if share is not None and want[0] == "batch":
        share.add(body, typed=not typed.long_way)


def dumps(doc) -> bytes:
    """JSON as Python writes it: NaN and Infinity literals included (MLflow's client does)."""
    return json.dumps(doc).encode()


# -- the bodies ---------------------------------------------------------------------------------
INTEGERS = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1)}
FINITE = st.one_of(st.floats(-1e15, 1e15), st.integers(-(10**15), 10**15))  # /predict's range
# Edge values: any JSON scalar, the literals, and what MLflow's coercions take for a boolean
# ("true", 0, 1.0) or a number ("3", true); "NaN" as a string: a NaN token may only be read as
# null where no column is a string.
EDGE = st.one_of(
    VALUES,
    st.sampled_from(["NaN", "true", "no", "1", 0, 1, 0.0, 1.0, -0.0, 2**31, 2**63, -(2**63) - 1]),
)
SHAPES = {
    "predict": ["list", "lone record"],
    "invocations": ["split", "split+extra", "records", "records+extra"],
}
EDGE_SHAPES = {
    "predict": ["dataframe_records", "a list of lists"],
    "invocations": ["two formats", "inputs", "instances", "no format"],
}
# The share of bodies with twists (percent). On /invocations MLflow's coercions take most edge
# values, the long way's job: fewer twisted bodies there, for a typed share well above 90%.
TWISTED = {"predict": 30, "invocations": 15}
TWISTS = ["value", "value", "value", "missing field", "extra field", "shape", "empty", "not JSON"]


def plain(col: Column, *, nan: bool = False) -> st.SearchStrategy:
    """A value the typed decoders take for `col` (serving.decoders' docstring): a number for a
    double (an integer too), an int for an integer column, a string, true or false; null (MLflow's
    NaN too, with `nan`) where the column may be null, but never in an integer column."""
    if col.type in NUMBER:
        values = FINITE
    elif col.type in INTEGERS:
        values = st.integers(*INTEGERS[col.type])
    elif col.type == "string":
        values = st.one_of(st.sampled_from(col.categories or ["monthly"]), st.text(max_size=8))
    else:
        values = st.booleans()
    if col.nullable and col.type not in INTEGERS:
        return (
            st.one_of(values, values, st.none(), st.just(math.nan)) if nan else values | st.none()
        )
    return values


def bodies(columns: list[Column], method: str, *, nan: bool = False) -> st.SearchStrategy:
    """Request bodies for the signature on `method`: typical valid requests (every value its
    column's plain type, 1 to 4 records, in one of the method's shapes), and in TWISTED[method]
    percent of them 1 to 3 twists: an edge value, a missing or extra field, another shape, an
    empty batch, a body that is no JSON record at all.
    Which bodies are twisted is decided by the typical body's CRC, not by a draw: Hypothesis
    draws the simplest value (no twist) for about half of its examples and varies earlier ones,
    so a drawn share would swing from run to run (measured: 85% to 100% typed)."""
    names = [c.name for c in columns]
    nan = nan and method == "invocations"  # /predict takes no NaN
    row = st.fixed_dictionaries({c.name: plain(c, nan=nan) for c in columns})

    def encode(records: list[dict], order: list[str], shape: str) -> bytes:
        if method == "invocations":
            return dumps(invocation(records, order, shape))
        if shape == "lone record" and records:
            return dumps(records[0])
        if shape == "dataframe_records":
            return dumps({"dataframe_records": records})
        if shape == "a list of lists":
            return dumps([list(r.values()) for r in records])
        return dumps(records)

    @st.composite
    def body(draw) -> bytes:
        records = draw(st.lists(row, min_size=1, max_size=4))
        order = draw(st.permutations(names))
        records = [{n: r[n] for n in order} for r in records]
        shape = draw(st.sampled_from(SHAPES[method]))
        typical = encode(records, order, shape)
        if zlib.crc32(typical) % 100 >= TWISTED[method]:
            return typical
        for twist in draw(st.lists(st.sampled_from(TWISTS), min_size=1, max_size=3)):
            where = draw(st.integers(0, max(len(records) - 1, 0)))
            name = draw(st.sampled_from(names))
            if twist == "value" and records:
                records[where][name] = draw(EDGE)
            elif twist == "missing field" and records:
                records[where].pop(name, None)
            elif twist == "extra field" and records:
                records[where]["not a feature"] = draw(EDGE)
            elif twist == "shape":
                shape = draw(st.sampled_from(EDGE_SHAPES[method]))
            elif twist == "empty":
                records = []
            elif twist == "not JSON":
                return draw(st.sampled_from([b"", b"{", b"null", b'"text"', b"NaN"]))
        return encode(records, order, shape)

    return body()


def invocation(records: list[dict], order: list[str], shape: str) -> dict:
    if shape.startswith("split"):
        columns = [*order, "not a feature"] if shape.endswith("extra") else order
        data = [[r.get(c, 1.5) for c in columns] for r in records]
        return {"dataframe_split": {"columns": columns, "data": data}}
    if shape == "two formats":
        return {"dataframe_records": records, "inputs": records}
    if shape in ("inputs", "instances"):
        return {shape: records}
    if shape == "no format":
        return {"params": {"records": records}}
    if shape.endswith("extra"):
        records = [{**r, "not a feature": 1.5} for r in records]
    return {"dataframe_records": records, "params": {"ignored": True}}


# -- the properties -----------------------------------------------------------------------------
def assert_outcomes_are_the_long_ways(
    request, pair, method: str, examples: int, *, nan: bool = False
) -> None:
    share = TypedShare()

    def check(body):
        assert_same_outcome(pair, method, body, share)

    run_property(request, check, examples, body=bodies(pair[0].columns, method, nan=nan))
    share.check()


@pytest.mark.parametrize("method", ["predict", "invocations"])
def test_mixed_outcome_is_the_long_ways(request, mixed, method):
    assert_outcomes_are_the_long_ways(request, mixed, method, 200)


@pytest.mark.parametrize("method", ["predict", "invocations"])
def test_numeric_outcome_is_the_long_ways(request, numeric, method):
    assert_outcomes_are_the_long_ways(request, numeric, method, 150)


@pytest.mark.parametrize("method", ["predict", "invocations"])
@pytest.mark.parametrize("strings", [True, False], ids=["with a string", "no string"])
def test_boolean_outcome_is_the_long_ways(request, method, strings):
    """Boolean columns: true/false on the typed way, and the long way's answer for anything
    else (on /invocations MLflow's coercions: 1, "true"...). With no string column, MLflow's
    NaN for a missing value is a typical /invocations value, read as null on the typed way."""
    columns = [c for c in FLAG_COLUMNS if strings or c.type != "string"]
    pair = parsers(spec_of(columns))
    assert_outcomes_are_the_long_ways(request, pair, method, 150, nan=not strings)


# -- single bodies ------------------------------------------------------------------------------
# Values of another type than a column's, or at its edges. The property tests' twists meet each
# pairing of value and column only now and then (most of their bodies are typical), so every
# pairing is tried here, on both methods: a typed way that took 0 for a boolean (or 1.0 for an
# integer) would give the long way's False (1) a different type, or a batch for its error.
OTHER_TYPES = [None, True, False, 0, 1, 3, -0.0, 0.0, 1.0, 2.5, math.nan, math.inf]
OTHER_TYPES += ["", "true", "0", "3", "2.5", "NaN", 10**15 + 1, 2**63, [1], {"a": 1}]


@pytest.fixture(scope="module")
def signatures(mixed, numeric):
    """name -> (parsers, a typical valid record)."""
    no_string = [c for c in FLAG_COLUMNS if c.type != "string"]
    return {
        "mixed": (mixed, record()),
        "numeric": (numeric, dict(zip(NUMERIC_NAMES, [1.5, 2.0, 0.5], strict=True))),
        "boolean": (parsers(spec_of(FLAG_COLUMNS)), FLAG_RECORD),
        "boolean, no string": (
            parsers(spec_of(no_string)),
            {c.name: FLAG_RECORD[c.name] for c in no_string},
        ),
    }


@pytest.mark.parametrize("method", ["predict", "invocations"])
def test_a_value_of_another_type_gives_the_long_ways_outcome(signatures, method):
    for pair, base in signatures.values():
        for col in pair[0].columns:
            for value in OTHER_TYPES:
                records = [base, {**base, col.name: value}]
                if method == "predict":
                    assert_same_outcome(pair, method, dumps(records))
                    continue
                for shape in ("records", "split"):
                    body = dumps(invocation(records, list(base), shape))
                    assert_same_outcome(pair, method, body)


def test_typed_paths_take_the_common_bodies(numeric, mixed):
    """The point of the typed decoders: valid bodies, nulls and MLflow's NaN included, take
    them (a test that both ways agree would also pass if the typed way took nothing)."""
    typed = numeric[0].typed
    split = {"columns": NUMERIC_NAMES, "data": [[None, 2.0, float("nan")], [1, 2.5, 3.0]]}
    assert typed.invocation(dumps({"dataframe_split": split})) is not None
    assert mixed[0].typed.predict(dumps([record(), record(contract=None)])) is not None
    body = dumps({"dataframe_records": [record(), record(region=None)]})
    assert mixed[0].typed.invocation(body) is not None
    flags = parsers(spec_of(FLAG_COLUMNS))[0]
    flag_record = {**FLAG_RECORD, "is senior (y/n)": None}
    for method in ("predict", "invocations"):
        body = dumps(
            {"dataframe_records": [flag_record]} if method == "invocations" else [flag_record]
        )
        flags.long_way = False
        batch = getattr(flags, method)(body)
        assert not flags.long_way, method
        assert [type(v) for v in batch.columns["paperless billing"]] == [bool], method


def test_nan_tokens_are_nulls_only_where_no_column_is_a_string(numeric, mixed):
    nan = float("nan")
    body = dumps({"dataframe_records": [record(contract="NaN", **{"monthly_charges (usd)": nan})]})
    assert_same_outcome(mixed, "invocations", body)
    assert mixed[0].typed.invocation(body) is None  # a string column: the long way reads NaN
    body = dumps({"dataframe_records": [dict(zip(NUMERIC_NAMES, [nan, 1.0, 2.0], strict=True))]})
    assert_same_outcome(numeric, "invocations", body)
    assert numeric[0].typed.invocation(body) is None  # "NaN share" would be renamed
    spec = ServingSpec("0", "regression", [], "predict", columns=NUMERIC_COLUMNS[:2])
    plain_pair = parsers(spec)
    body = dumps({"dataframe_split": {"columns": NUMERIC_NAMES[:2], "data": [[nan, 1.0]]}})
    assert_same_outcome(plain_pair, "invocations", body)
    assert plain_pair[0].typed.invocation(body) is not None


@pytest.mark.parametrize("shape", ["records", "split"])
@pytest.mark.parametrize("tenure", [3, 10**15 + 1, 2**63 - 1])
def test_an_integer_column_is_ints_either_way_when_nan_marks_a_missing_boolean(shape, tenure):
    """MLflow's client writes a missing boolean as NaN: the typed way reads it as null, and with
    the typed decoders off the batch goes through the validators. Either way the same batch:
    the integer columns' values as ints (MLflow casts a long column to int64, an integer one to
    int32), a long column's beyond 1e15 too, exact."""
    columns = [c for c in FLAG_COLUMNS if c.type != "string"]
    typed, long_way = parsers(spec_of(columns))
    rec = {"is senior (y/n)": math.nan, "paperless billing": True, "tenure months": tenure}
    rec |= {"dependents": 0, "monthly charges": 1.5}
    body = dumps(invocation([rec], list(rec), shape))
    got, want = typed.invocations(body), long_way.invocations(body)
    assert not typed.long_way and long_way.long_way  # the typed way, and the validators
    for col in columns:
        assert column_values(col, got.columns[col.name]) == column_values(
            col, want.columns[col.name]
        ), col.name
    for batch in (got, want):
        assert [(type(v), v) for v in batch.columns["tenure months"]] == [(int, tenure)]
        assert [(type(v), v) for v in batch.columns["dependents"]] == [(int, 0)]
