"""The versioned dataset, the task, the split and the model's input, shared by validate, train,
evaluate and register (a candidate and the champion are scored on the same holdout).

Dataset layout: `data/dataset/<fingerprint>/<date>.parquet`, one folder per schema. The
fingerprint hashes `schema` in params.yaml (target, task, id and date columns, feature lists),
and `schema.json` in the folder records the kind of each stored column. A batch only ever joins
the folder of its own schema (and validate quarantines one whose column kinds differ from the
folder's), so rows of another schema are never concatenated: after a schema change, train reads
the new folder alone and the old one stays as the data the older models were trained on.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from pipelines.common import (
    DATASET_DIR,
    PipelineError,
    atomic_write_json,
    atomic_write_parquet,
    fingerprint,
)

if TYPE_CHECKING:
    from pipelines.config import Params

SCHEMA_FILE = "schema.json"
YEARS = (1000, 9999)  # an integer date column holds years


# ----------------------------------------------------------------------------- dataset folders
def dataset_dir(params: Params) -> Path:
    """The folder of the current schema, relative to the project root."""
    return DATASET_DIR / params.schema.fingerprint()


def load_dataset(root: Path, params: Params) -> pd.DataFrame:
    """Every validated batch of the current schema, oldest date first."""
    folder = dataset_dir(params)
    files = sorted((root / folder).glob("*.parquet"))
    if not files:
        others = sorted(p.parent.name for p in (root / DATASET_DIR).glob(f"*/{SCHEMA_FILE}"))
        hint = f" (folders of other schemas: {', '.join(others)})" if others else ""
        raise PipelineError(
            f"no validated batch of this schema in {folder}: run ingest and validate{hint}"
        )
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def column_kind(series: pd.Series) -> str:
    """number | bool | datetime | text | mixed: what a stored column holds, for schema.json."""
    if ptypes.is_bool_dtype(series):
        return "bool"
    if ptypes.is_numeric_dtype(series):
        return "number"
    if ptypes.is_datetime64_any_dtype(series):
        return "datetime"
    kinds = {_value_kind(v) for v in series.dropna()}
    return kinds.pop() if len(kinds) == 1 else ("text" if not kinds else "mixed")


def _value_kind(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, float, np.number)):
        return "number"
    return "text"


def stored_schema(params: Params, frame: pd.DataFrame) -> dict[str, Any]:
    return {
        "fingerprint": params.schema.fingerprint(),
        "schema": params.sections("schema")["schema"],
        "columns": {col: column_kind(frame[col]) for col in frame.columns},
    }


def schema_conflicts(root: Path, params: Params, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Columns whose kind differs from what the schema's folder already holds (empty: none)."""
    path = root / dataset_dir(params) / SCHEMA_FILE
    if not path.exists():
        return []
    known = json.loads(path.read_text())["columns"]
    seen = stored_schema(params, frame)["columns"]
    return [
        {
            "column": col,
            "check": "dataset_schema",
            "failed_count": len(frame),
            "examples": [],
            "expected": known[col],
            "observed": kind,
        }
        for col, kind in seen.items()
        if known.get(col, kind) != kind
    ]


def add_batch(root: Path, params: Params, date: str, frame: pd.DataFrame) -> Path:
    """Write a validated batch into its schema's folder (replacing that date's batch)."""
    folder = root / dataset_dir(params)
    if not (folder / SCHEMA_FILE).exists():
        atomic_write_json(folder / SCHEMA_FILE, stored_schema(params, frame))
    atomic_write_parquet(folder / f"{date}.parquet", frame)
    return dataset_dir(params) / f"{date}.parquet"


def data_version(root: Path) -> str:
    """The dataset's hash as DVC computes it for the `data/dataset` output (md5 of the .dir)."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(root / DATASET_DIR), fs, "md5")
    return obj.hash_info.value


# ----------------------------------------------------------------------------- column values
def parse_dates(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(datetimes, mask of values that are not dates). Accepts datetimes (time zones become
    UTC), date/datetime text and whole-number years (2007 -> 2007-01-01, never 2007 ns)."""
    present = series.notna()
    if ptypes.is_datetime64_any_dtype(series):
        parsed = series
    elif ptypes.is_numeric_dtype(series) and not ptypes.is_bool_dtype(series):
        numbers = series.astype("float64")
        is_year = (numbers % 1 == 0) & numbers.between(*YEARS)
        years = numbers.where(is_year).map(lambda y: f"{int(y):04d}", na_action="ignore")
        parsed = pd.to_datetime(years, format="%Y", errors="coerce")
    else:
        text = series.astype(object).where(present, None)
        parsed = pd.to_datetime(text, errors="coerce", format="mixed", utc=True)
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    parsed = parsed.astype("datetime64[us]")
    return parsed, present & parsed.isna()


def as_categories(series: pd.Series) -> pd.Series:
    """Category values as text, nulls as NaN: 3, 3.0 and "3" are the same category (a CSV column
    with a blank reads as floats), True is "True"."""

    def text(value: Any) -> Any:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return np.nan
        if isinstance(value, (bool, np.bool_)):
            return str(bool(value))
        if isinstance(value, (int, float, np.number)) and float(value).is_integer():
            return str(int(value))
        return str(value)

    return pd.Series([text(v) for v in series.astype(object)], index=series.index, dtype=object)


def features(df: pd.DataFrame, params: Params) -> pd.DataFrame:
    """The model's input frame: numeric features as float64, categorical ones as text (NaN for
    missing), named and ordered as in params.yaml."""
    schema = params.schema
    missing = [c for c in schema.features if c not in df]
    if missing:
        raise PipelineError(f"feature column(s) missing from the data: {', '.join(missing)}")
    out = pd.DataFrame(index=df.index)
    for col in schema.numeric_features:
        try:
            out[col] = pd.to_numeric(df[col], errors="raise").astype("float64")
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"numeric feature '{col}': {exc}") from None
    for col in schema.categorical_features:
        out[col] = as_categories(df[col])
    return out


# ----------------------------------------------------------------------------- task and target
def resolve_task(params: Params, labels: pd.Series) -> tuple[str, str]:
    """(task, how it was decided): `schema.task`, else inferred from the target's values —
    text or booleans are classes; numbers are a regression target unless they are whole
    numbers with at most `schema.max_classes` distinct values."""
    schema = params.schema
    if schema.task:
        return schema.task, "set by schema.task"
    values = labels.dropna()
    name = schema.target
    if ptypes.is_bool_dtype(values) or not ptypes.is_numeric_dtype(values):
        return "classification", f"inferred: target '{name}' holds labels, not numbers"
    if not (values.astype("float64") % 1 == 0).all():
        return "regression", f"inferred: target '{name}' has non-integer values"
    distinct = int(values.nunique())
    if distinct <= schema.max_classes:
        return "classification", (
            f"inferred: target '{name}' has {distinct} distinct whole numbers "
            f"(<= schema.max_classes {schema.max_classes})"
        )
    return "regression", (
        f"inferred: target '{name}' has {distinct} distinct whole numbers "
        f"(> schema.max_classes {schema.max_classes})"
    )


def target(df: pd.DataFrame, params: Params, task: str) -> pd.Series:
    """The target column: labels as stored (classification) or float64 (regression)."""
    name = params.schema.target
    if name not in df:
        raise PipelineError(f"target column '{name}' is not in the dataset")
    labels = df[name]
    if labels.isna().any():
        raise PipelineError(f"target '{name}' has {int(labels.isna().sum())} null value(s)")
    if task == "classification":
        return labels
    numbers = pd.to_numeric(labels, errors="coerce")
    bad = labels[numbers.isna()]
    if len(bad):
        examples = ", ".join(repr(v) for v in bad.head(3))
        raise PipelineError(f"regression target '{name}' has non-numeric values: {examples}")
    return numbers.astype("float64")


def model_schema(params: Params, task: str) -> dict[str, Any]:
    """What a model's inputs and output mean; its fingerprint tells the gate whether the
    champion and the candidate can be compared at all."""
    schema = params.schema
    spec = {
        "task": task,
        "target": schema.target,
        "numeric_features": sorted(schema.numeric_features),
        "categorical_features": sorted(schema.categorical_features),
    }
    return {"fingerprint": fingerprint(spec), **spec}


# ----------------------------------------------------------------------------- split
def _counts(labels: pd.Series) -> str:
    return ", ".join(f"'{label}' ({n})" for label, n in labels.value_counts().items())


def split(df: pd.DataFrame, params: Params, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout). With `schema.date_column` the holdout is the most recent
    `split.holdout_fraction` of rows; otherwise a random sample seeded by `split.random_state`,
    stratified by class for classification. A split that cannot be scored is bad input."""
    from sklearn.model_selection import train_test_split

    schema, cfg = params.schema, params.split
    n_rows = len(df)
    n_holdout = round(n_rows * cfg.holdout_fraction)
    if n_holdout < 2 or n_rows - n_holdout < 2:
        raise PipelineError(
            f"dataset has {n_rows} rows: split.holdout_fraction {cfg.holdout_fraction} leaves "
            f"{n_rows - n_holdout} to train and {n_holdout} to score (need 2 or more of each)"
        )
    labels = df[schema.target]
    if schema.date_column:
        ordered = df.sort_values(schema.date_column, kind="mergesort")
        train_df, holdout = ordered.iloc[:-n_holdout], ordered.iloc[-n_holdout:]
        how = f"the holdout is the latest {n_holdout} rows by '{schema.date_column}'"
    elif task == "classification":
        counts = labels.value_counts()
        if (counts < 2).any():
            raise PipelineError(
                "a stratified split needs 2 or more rows of each class: "
                f"{_counts(labels[labels.isin(counts.index[counts < 2])])}"
            )
        if n_holdout < len(counts):
            raise PipelineError(
                f"a holdout of {n_holdout} rows cannot hold all {len(counts)} classes: "
                "raise split.holdout_fraction"
            )
        train_df, holdout = train_test_split(
            df, test_size=n_holdout, stratify=labels, random_state=cfg.random_state
        )
        how = "stratified random split"
    else:
        train_df, holdout = train_test_split(df, test_size=n_holdout, random_state=cfg.random_state)
        how = "random split"
    if task == "classification":
        _check_classes(train_df[schema.target], holdout[schema.target], how)
    return train_df.reset_index(drop=True), holdout.reset_index(drop=True)


def _check_classes(train_labels: pd.Series, holdout_labels: pd.Series, how: str) -> None:
    unseen = holdout_labels[~holdout_labels.isin(train_labels.unique())]
    if len(unseen):
        raise PipelineError(
            f"the holdout has class(es) that training never sees: {_counts(unseen)}; "
            f"training classes: {_counts(train_labels)} ({how})"
        )
    if train_labels.nunique() < 2:
        raise PipelineError(
            f"training rows hold one class only: {_counts(train_labels)} ({how}); need 2 or more"
        )
    if holdout_labels.nunique() < 2:
        raise PipelineError(
            f"the holdout holds one class only: {_counts(holdout_labels)} ({how}): too small "
            "to score; raise split.holdout_fraction"
        )
