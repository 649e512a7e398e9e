"""Typed JSON decoding for the common, valid request: msgspec types built from the signature, so
a request's values are type-checked while the body is parsed, at C speed, instead of after it,
value by value in Python (a third of a 1000-record batch's time before this).

A body these types refuse is no error here: serving.requests sends it the long way (orjson and
the validators), which accepts and refuses exactly what it did before and says why. So the types
take only a subset of what the validators accept, and give the same values:
- double/float: a JSON number (an integer becomes a float, as the validators' coercion does);
  long/integer: a JSON integer; string: a string; boolean: true/false (never a number for it);
  null only where the column may be null (never for an integer column: its array has no NaN);
- /predict's records have exactly the signature's fields; /invocations' records may hold more
  (MLflow ignores extra columns, and so do the types, unread).
"""

from __future__ import annotations

from functools import reduce
from operator import or_
from typing import Any

import msgspec

from serving.spec import Column

PLAIN = {"double": float, "float": float, "long": int, "integer": int, "string": str}
PLAIN["boolean"] = bool
NUMBER = ("double", "float")
INTEGER = ("long", "integer")


def _value_type(col: Column) -> Any:
    plain = PLAIN[col.type]
    return plain | None if col.nullable and col.type not in INTEGER else plain


class TypedDecoders:
    """The decoders of one signature (built once per loaded model)."""

    def __init__(self, columns: list[Column]) -> None:
        self.columns = columns
        self.numeric = all(c.type in NUMBER for c in columns)
        self.no_strings = all(c.type != "string" for c in columns)
        fields = [(f"f{i}", _value_type(c)) for i, c in enumerate(columns)]
        rename = {f"f{i}": c.name for i, c in enumerate(columns)}
        exact = msgspec.defstruct("Record", fields, rename=rename, forbid_unknown_fields=True)
        lax = msgspec.defstruct("MlflowRecord", fields, rename=rename)
        # dataframe_split's rows: each value one of the signature's plain types (which column
        # holds which is serving.requests' to check), or null.
        value = reduce(or_, {PLAIN[c.type] for c in columns}) | None
        split = msgspec.defstruct("Split", [("columns", list[str]), ("data", list[list[value]])])
        absent = msgspec.Raw()  # another format's key, skipped unread: its presence is enough
        invocation = msgspec.defstruct(
            "Invocation",
            [
                ("dataframe_split", split | msgspec.UnsetType, msgspec.UNSET),
                ("dataframe_records", list[lax] | msgspec.UnsetType, msgspec.UNSET),
                ("inputs", msgspec.Raw, absent),
                ("instances", msgspec.Raw, absent),
            ],
        )
        self._predict = msgspec.json.Decoder(list[exact] | exact)
        self._invocation = msgspec.json.Decoder(invocation)

    @classmethod
    def for_columns(cls, columns: list[Column] | None) -> TypedDecoders | None:
        """None for a tensor signature or a column type with no plain JSON type."""
        if not columns or any(c.type not in PLAIN for c in columns):
            return None
        return cls(columns)

    def predict(self, body: bytes) -> list[Any] | None:
        """/predict's records (a lone record as a list of one), or None: the long way."""
        try:
            decoded = self._predict.decode(body)
        except msgspec.DecodeError:
            return None
        return decoded if isinstance(decoded, list) else [decoded]

    def invocation(self, body: bytes) -> tuple[str, Any] | None:
        """(format, payload) of a dataframe_split or dataframe_records body, or None.

        MLflow's client writes a missing value as NaN, which JSON lacks and msgspec refuses. When
        no column is a string, NaN can only be a value (a NaN inside a column name makes the
        name one the model lacks: the long way), so it is read as null, the missing value that
        NaN means on /invocations."""
        try:
            doc = self._invocation.decode(body)
        except msgspec.DecodeError:
            if not (self.no_strings and b"NaN" in body):
                return None
            try:
                doc = self._invocation.decode(body.replace(b"NaN", b"null"))
            except msgspec.DecodeError:
                return None
        if len(doc.inputs) or len(doc.instances):
            return None
        split, records = doc.dataframe_split, doc.dataframe_records
        if (split is msgspec.UNSET) == (records is msgspec.UNSET):
            return None  # neither, or both: the long way says "exactly one"
        return ("dataframe_split", split) if records is msgspec.UNSET else ("records", records)


def as_table(records: list[Any]) -> list[tuple[Any, ...]]:
    """Decoded records as one tuple of values per column, in the signature's order."""
    return list(zip(*map(msgspec.structs.astuple, records), strict=True))
