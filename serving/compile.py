"""Compile a fitted contract pipeline into `serving.fastpath.LinearFastPath`, with a parity check.

Needs sklearn (imported by the caller's model load). Anything outside the supported shape
(a tree classifier, an imputer with indicators, a dropped one-hot category, ...) raises
`Unsupported` and the server keeps using sklearn itself.

CLI (used by the image build for a baked model, so the container starts without sklearn):
    python -m serving.compile MODEL_DIR
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from serving.fastpath import FastPathError, LinearFastPath


class Unsupported(ValueError):
    """The pipeline has a part the compiled path does not reproduce."""


def _steps(transformer: Any) -> list[Any]:
    if hasattr(transformer, "steps"):
        return [step for _, step in transformer.steps if step not in (None, "passthrough")]
    return [transformer]


def _imputer_fill(imputer: Any, n_cols: int) -> list[Any]:
    if getattr(imputer, "add_indicator", False):
        raise Unsupported("SimpleImputer(add_indicator=True)")
    mv = imputer.missing_values
    if not (mv is None or (isinstance(mv, float) and math.isnan(mv)) or mv is np.nan):
        raise Unsupported(f"SimpleImputer(missing_values={mv!r})")
    stats = list(imputer.statistics_)
    if len(stats) != n_cols:
        raise Unsupported("SimpleImputer dropped an all-missing column")
    return stats


def compile_pipeline(pipeline: Any) -> LinearFastPath:
    names = [type(step).__name__ for _, step in getattr(pipeline, "steps", [])]
    if names[-2:] != ["ColumnTransformer", "LogisticRegression"] or len(names) != 2:
        raise Unsupported(f"pipeline steps {names or type(pipeline).__name__}")
    pre = pipeline.steps[0][1]
    clf = pipeline.steps[1][1]
    coef = np.asarray(clf.coef_, dtype=np.float64)  # (n_out, n_features)
    intercept = np.array(clf.intercept_, dtype=np.float64).reshape(-1).copy()
    if coef.shape[0] != intercept.shape[0]:
        raise Unsupported("coef_/intercept_ shapes")

    feature_names = list(getattr(pre, "feature_names_in_", []))
    num_cols: list[str] = []
    num_fill: list[float] = []
    num_rows: list[np.ndarray] = []
    cat_cols: list[str] = []
    cat_fill: list[Any] = []
    cat_categories: list[list[Any]] = []
    cat_tables: list[np.ndarray] = []

    for name, trans, cols in pre.transformers_:
        if isinstance(trans, str):
            if trans == "drop":
                continue
            raise Unsupported(f"ColumnTransformer '{name}' is {trans!r}")
        out = pre.output_indices_[name]
        if out.stop == out.start:
            continue
        if isinstance(cols, str):
            cols = [cols]
        cols = [feature_names[c] if isinstance(c, int | np.integer) else c for c in cols]
        if not all(isinstance(c, str) for c in cols):
            raise Unsupported(f"ColumnTransformer '{name}' selects columns by {cols!r}")
        steps = _steps(trans)
        kinds = [type(s).__name__ for s in steps]
        fill: list[Any] = [None] * len(cols)
        if kinds and kinds[0] == "SimpleImputer":
            fill = _imputer_fill(steps[0], len(cols))
            steps, kinds = steps[1:], kinds[1:]

        if kinds == ["OneHotEncoder"]:
            enc = steps[0]
            if getattr(enc, "drop_idx_", None) is not None:
                raise Unsupported("OneHotEncoder(drop=...)")
            if getattr(enc, "_infrequent_enabled", False):
                raise Unsupported("OneHotEncoder with infrequent categories")
            if enc.handle_unknown not in ("ignore", "infrequent_if_exist"):
                # an unknown category would make sklearn raise: keep sklearn's behaviour
                raise Unsupported(f"OneHotEncoder(handle_unknown={enc.handle_unknown!r})")
            offset = out.start
            for col, f, cats in zip(cols, fill, enc.categories_, strict=True):
                cats_list = [c.item() if hasattr(c, "item") else c for c in cats]
                if any(isinstance(c, float) and math.isnan(c) for c in cats_list):
                    raise Unsupported(f"'{col}' has NaN as a category")
                width = len(cats_list)
                table = np.zeros((width + 1, coef.shape[0]))
                table[:width] = coef[:, offset : offset + width].T
                offset += width
                cat_cols.append(col)
                cat_fill.append(f.item() if hasattr(f, "item") else f)
                cat_categories.append(cats_list)
                cat_tables.append(table)
            if offset != out.stop:
                raise Unsupported(f"one-hot width of '{name}'")
        elif kinds in ([], ["StandardScaler"]):
            if out.stop - out.start != len(cols):
                raise Unsupported(f"output width of '{name}'")
            mean = np.zeros(len(cols))
            scale = np.ones(len(cols))
            if kinds:
                sc = steps[0]
                if sc.mean_ is not None:
                    mean = np.asarray(sc.mean_, dtype=np.float64)
                if sc.scale_ is not None:
                    scale = np.asarray(sc.scale_, dtype=np.float64)
            for i, col in enumerate(cols):
                w = coef[:, out.start + i] / scale[i]
                intercept -= w * mean[i]
                num_cols.append(col)
                f = fill[i]
                num_fill.append(np.nan if f is None else float(f))
                num_rows.append(w)
        else:
            raise Unsupported(f"ColumnTransformer '{name}' steps {kinds}")

    weights = np.array(num_rows).reshape(len(num_rows), coef.shape[0])
    return LinearFastPath(
        classes=[c.item() if hasattr(c, "item") else c for c in clf.classes_],
        num_cols=num_cols,
        num_fill=np.array(num_fill, dtype=np.float64),
        num_weights=weights,
        intercept=intercept,
        cat_cols=cat_cols,
        cat_fill=cat_fill,
        cat_categories=cat_categories,
        cat_tables=cat_tables,
    )


def check_records(
    features: list[Any], example: list[dict[str, Any]], fast: LinearFastPath | None
) -> list[dict[str, Any]]:
    """Reference records: the input example, then one column varied at a time (extreme and
    missing numbers, every known category, an unseen category, a missing category)."""
    base = dict(example[0]) if example else {}
    for f in features:
        base.setdefault(f.name, "x" if f.type == "string" else 0)
    out = [dict(r) for r in example]
    known: dict[str, list[Any]] = {}
    if fast is not None:
        known = dict(zip(fast.cat_cols, fast.cat_categories, strict=True))
    for f in features:
        if f.type == "string":
            values: list[Any] = [*known.get(f.name, []), "__unseen__", None]
        elif f.type in ("long", "integer"):
            v = int(base[f.name] or 0)
            values = [0, v * 3 + 7, -v - 5, None]
        elif f.type == "boolean":
            values = [True, False]
        else:
            v = float(base[f.name] or 0.0)
            values = [0.0, v * 3 + 7.5, -v - 5.25, 1e6, None]
        for value in values:
            out.append({**base, f.name: value})
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m serving.compile MODEL_DIR", file=sys.stderr)
        return 2
    from serving.model import ModelLoadError, compile_to_cache

    try:
        print(compile_to_cache(argv[0]))
    except (ModelLoadError, Unsupported, FastPathError) as exc:
        print(f"not compiled (the server will use sklearn): {exc}", file=sys.stderr)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
