"""A compiled, numpy-only form of the contract's sklearn pipeline (imputers, scaler, one-hot
encoder, logistic regression).

The fitted statistics are folded into one linear map: numeric columns become a weight matrix
(scaler folded in), each categorical column a lookup table of its one-hot weights (an unknown
category adds nothing, as with `handle_unknown="ignore"`). One request then costs a few
microseconds instead of sklearn's per-call validation and pandas overhead.

This module imports numpy only, so a server using a compiled model starts without importing
sklearn, scipy or pandas. `serving.compile` builds it from a fitted pipeline and proves it equal
to `predict_proba` on a reference set; that reference set is stored with it and checked again
at every load.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FORMAT_VERSION = 1
PARITY_ATOL = 1e-8
SMALL_BATCH = 8  # up to this many records, the plain-Python path is faster than numpy


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class FastPathError(ValueError):
    """The compiled file is missing, stale or does not reproduce its reference predictions."""


class LinearFastPath:
    kind = "compiled-linear"

    def __init__(
        self,
        *,
        classes: list[Any],
        num_cols: list[str],
        num_fill: np.ndarray,
        num_weights: np.ndarray,
        intercept: np.ndarray,
        cat_cols: list[str],
        cat_fill: list[Any],
        cat_categories: list[list[Any]],
        cat_tables: list[np.ndarray],
    ) -> None:
        self.classes = list(classes)
        self.num_cols = list(num_cols)
        self.num_fill = np.asarray(num_fill, dtype=np.float64)
        self.num_weights = np.asarray(num_weights, dtype=np.float64)  # (n_num, n_out)
        self.intercept = np.asarray(intercept, dtype=np.float64)  # (n_out,)
        self.cat_cols = list(cat_cols)
        self.cat_fill = list(cat_fill)
        self.cat_categories = [list(c) for c in cat_categories]
        # one row per category plus a trailing zero row that index -1 selects (unknown value)
        self.cat_tables = [np.asarray(t, dtype=np.float64) for t in cat_tables]
        self._lookups = [{v: i for i, v in enumerate(cats)} for cats in self.cat_categories]
        self.binary = self.intercept.shape[0] == 1
        # Plain-Python copies for a few records, where numpy's per-call overhead dominates.
        self._py_intercept = self.intercept.tolist()
        self._py_num = [
            (c, float(f), w)
            for c, f, w in zip(self.num_cols, self.num_fill, self.num_weights.tolist(), strict=True)
        ]
        self._py_cat = [
            (c, f, {v: table[i].tolist() for v, i in lookup.items()})
            for c, f, lookup, table in zip(
                self.cat_cols, self.cat_fill, self._lookups, self.cat_tables, strict=True
            )
        ]
        if self.binary and len(self.classes) != 2:
            raise FastPathError("a single decision column needs exactly two classes")
        if not self.binary and self.intercept.shape[0] != len(self.classes):
            raise FastPathError("decision columns do not match the classes")

    # -- prediction ---------------------------------------------------------------------
    def decision(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        n = len(records)
        if self.num_cols:
            cols = self.num_cols
            x = np.array([[r[c] for c in cols] for r in records], dtype=np.float64)
            missing = np.isnan(x)
            if missing.any():
                x = np.where(missing, self.num_fill, x)
            z = x @ self.num_weights
            z += self.intercept
        else:
            z = np.tile(self.intercept, (n, 1))
        for col, fill, lookup, table in zip(
            self.cat_cols, self.cat_fill, self._lookups, self.cat_tables, strict=True
        ):
            # None (or a NaN from a pandas-made example) is missing: the imputer's fill value
            idx = [lookup.get(fill if (v := r[col]) is None or v != v else v, -1) for r in records]
            z += table[idx]
        return z

    def decision_rows(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """`decision` in plain Python, row by row (same math, faster for a handful of rows)."""
        return np.array(self._rows(records), dtype=np.float64).reshape(len(records), -1)

    def _rows(self, records: Sequence[Mapping[str, Any]]) -> list[list[float]]:
        out = []
        n_out = len(self._py_intercept)
        for r in records:
            z = list(self._py_intercept)
            for col, fill, w in self._py_num:
                v = r[col]
                if v is None or v != v:
                    v = fill
                for k in range(n_out):
                    z[k] += w[k] * v
            for col, fill, lut in self._py_cat:
                v = r[col]
                w = lut.get(fill if v is None or v != v else v)
                if w is not None:
                    for k in range(n_out):
                        z[k] += w[k]
            out.append(z)
        return out

    def predict_proba(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if len(records) > SMALL_BATCH:
            return self._proba(self.decision(records))
        rows = []
        for z in self._rows(records):
            if self.binary:
                p1 = _sigmoid(z[0])
                rows.append([1.0 - p1, p1])
            else:
                top = max(z)
                e = [math.exp(v - top) for v in z]
                total = sum(e)
                rows.append([v / total for v in e])
        return np.array(rows, dtype=np.float64)

    def _proba(self, z: np.ndarray) -> np.ndarray:
        if self.binary:
            p1 = np.exp(-np.logaddexp(0.0, -z[:, 0]))  # sigmoid, no overflow
            return np.column_stack([1.0 - p1, p1])
        z = z - z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    # -- persistence ----------------------------------------------------------------------
    def save(
        self,
        path: str,
        *,
        fingerprint: str,
        check_records: list[dict[str, Any]],
        check_proba: np.ndarray,
    ) -> None:
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "classes": self.classes,
            "num_cols": self.num_cols,
            "cat_cols": self.cat_cols,
            "cat_fill": self.cat_fill,
            "cat_categories": self.cat_categories,
            "check_records": check_records,
        }
        arrays = {f"cat_table_{i}": t for i, t in enumerate(self.cat_tables)}
        with open(path, "wb") as fh:
            np.savez(
                fh,
                meta=np.array(json.dumps(meta)),
                num_fill=self.num_fill,
                num_weights=self.num_weights,
                intercept=self.intercept,
                check_proba=np.asarray(check_proba, dtype=np.float64),
                **arrays,
            )

    @classmethod
    def load(cls, path: str, fingerprint: str) -> LinearFastPath:
        """Load a compiled model and re-check it against the sklearn reference stored with it."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("format") != FORMAT_VERSION:
                    raise FastPathError(f"format {meta.get('format')} != {FORMAT_VERSION}")
                if meta.get("fingerprint") != fingerprint:
                    raise FastPathError("compiled for another model file (fingerprint differs)")
                fast = cls(
                    classes=meta["classes"],
                    num_cols=meta["num_cols"],
                    num_fill=data["num_fill"],
                    num_weights=data["num_weights"],
                    intercept=data["intercept"],
                    cat_cols=meta["cat_cols"],
                    cat_fill=meta["cat_fill"],
                    cat_categories=meta["cat_categories"],
                    cat_tables=[data[f"cat_table_{i}"] for i in range(len(meta["cat_cols"]))],
                )
                check_proba = data["check_proba"]
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, FastPathError):
                raise
            raise FastPathError(f"unreadable compiled model {path}: {exc}") from exc
        fast.verify(meta["check_records"], check_proba)
        return fast

    def verify(self, records: list[dict[str, Any]], expected: np.ndarray) -> None:
        if not records:
            raise FastPathError("no reference records to check the compiled model against")
        # both code paths: vectorised (batches) and row by row (a few records)
        small = [self.predict_proba(records[i : i + 1]) for i in range(len(records))]
        for path, got in (
            ("batch", self._proba(self.decision(records))),
            ("row", np.vstack(small)),
        ):
            if got.shape != expected.shape:
                raise FastPathError(f"parity check ({path}): shape {got.shape} != {expected.shape}")
            worst = float(np.max(np.abs(got - expected)))
            if not worst <= PARITY_ATOL:
                raise FastPathError(
                    f"parity check ({path}): max |p - p_sklearn| = {worst:.3g} > {PARITY_ATOL:g}"
                )
