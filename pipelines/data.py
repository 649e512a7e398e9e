"""The versioned dataset, the task, the split and the model's input, shared by validate, train,
evaluate and register (a candidate and the champion are scored on the same holdout).

Dataset layout: `data/dataset/<fingerprint>/<date>.parquet`, one folder per schema. The
fingerprint hashes `schema` in params.yaml (target, task, id and date columns, feature lists),
and `schema.json` in the folder records the kind of each stored column. A batch only ever joins
the folder of its own schema (and validate quarantines one whose column kinds differ from the
folder's), so rows of another schema are never concatenated: after a schema change, train reads
the new folder alone and the old one stays as the data the older models were trained on.

The window (`train.window`): train, evaluate and register read only the batches it takes, chosen
by their file names (the logical dates) and, for a rows window, their Parquet footers; every
older batch stays in the folder, versioned, and is never opened. Only the columns the model
uses are read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pandas.api import types as ptypes

from pipelines.common import DATASET_DIR, PipelineError, atomic_write_json, fingerprint
from pipelines.memory import LOAD_BYTES_PER_CELL, Budget

if TYPE_CHECKING:
    from pipelines.config import Params, Window

SCHEMA_FILE = "schema.json"
YEARS = (1000, 9999)  # an integer date column holds years


# ----------------------------------------------------------------------------- dataset folders
def dataset_dir(params: Params) -> Path:
    """The folder of the current schema, relative to the project root."""
    return DATASET_DIR / params.schema.fingerprint()


def batch_files(root: Path, params: Params) -> list[tuple[dt.date, Path]]:
    """(logical date, file) of every validated batch of the current schema, oldest first. Only
    the directory is listed: no file is opened."""
    folder = dataset_dir(params)
    files = []
    for path in (root / folder).glob("*.parquet"):
        try:
            files.append((dt.date.fromisoformat(path.stem), path))
        except ValueError:
            raise PipelineError(
                f"{folder / path.name} is not named by a date: the dataset holds <date>.parquet"
            ) from None
    if not files:
        others = sorted(p.parent.name for p in (root / DATASET_DIR).glob(f"*/{SCHEMA_FILE}"))
        hint = f" (folders of other schemas: {', '.join(others)})" if others else ""
        raise PipelineError(
            f"no validated batch of this schema in {folder}: run ingest and validate{hint}"
        )
    return sorted(files)


@dataclass(frozen=True)
class WindowPlan:
    """The batches `train.window` takes, decided from file names and footers alone.

    `files` are read whole except the oldest of a rows window, of which only the newest
    `oldest_rows` rows are taken (by the date column, else the last rows of the file)."""

    window: Window
    files: list[tuple[dt.date, Path]]
    rows: int
    oldest_rows: int | None
    history_files: int

    def summary(self) -> dict[str, Any]:
        """What the stages log to MLflow and print: the window in force, its dates and rows."""
        return {
            "window": str(self.window),
            "first_date": self.files[0][0].isoformat(),
            "last_date": self.files[-1][0].isoformat(),
            "files": len(self.files),
            "rows": self.rows,
            "history_files": self.history_files,
        }


def plan_window(files: list[tuple[dt.date, Path]], window: Window) -> WindowPlan:
    """`all`; `<N> days`: the batches of the N logical dates up to the newest one (a date
    without a batch still counts: the window is calendar days); `<N> rows`: the newest N rows,
    newest batches first. A window larger than the history takes all of it."""
    if window.unit == "days":
        cutoff = files[-1][0] - dt.timedelta(days=window.size - 1)
        chosen = [(day, path) for day, path in files if day >= cutoff]
        rows = sum(pq.read_metadata(path).num_rows for _, path in chosen)
        return WindowPlan(window, chosen, rows, None, len(files))
    if window.unit == "all":
        rows = sum(pq.read_metadata(path).num_rows for _, path in files)
        return WindowPlan(window, files, rows, None, len(files))
    chosen, rows = [], 0
    for day, path in reversed(files):
        if rows >= window.size:
            break
        chosen.insert(0, (day, path))
        rows += pq.read_metadata(path).num_rows
    oldest_rows = None
    if rows > window.size:
        oldest_rows = pq.read_metadata(chosen[0][1]).num_rows - (rows - window.size)
        rows = window.size
    return WindowPlan(window, chosen, rows, oldest_rows, len(files))


def window_plan(root: Path, params: Params) -> WindowPlan:
    return plan_window(batch_files(root, params), params.train.window)


def model_columns(params: Params) -> list[str]:
    """The columns the stages after validate read: date, target, features (not the id)."""
    schema = params.schema
    return [c for c in (schema.date_column, schema.target, *schema.features) if c]


def load_window(root: Path, params: Params, plan: WindowPlan | None = None) -> pd.DataFrame:
    """The rows of `train.window` (oldest batch first), only the columns the model needs.

    Only the window's files are opened (pyarrow reads them column by column, in parallel), and
    the Arrow table is handed to pandas buffer by buffer (`self_destruct`): one copy in memory,
    never the history, never the table twice."""
    plan = plan or window_plan(root, params)
    paths = [str(path) for _, path in plan.files]
    # The window's own footers: the batches' types, widened where they differ (int and float).
    schema = pa.unify_schemas([pq.read_schema(p) for p in paths], promote_options="permissive")
    columns = [c for c in model_columns(params) if c in schema.names]
    whole = paths[1:] if plan.oldest_rows is not None else paths
    tables = [ds.dataset(whole, schema=schema).to_table(columns=columns)] if whole else []
    if plan.oldest_rows is not None:
        tables.insert(0, _newest_rows(paths[0], columns, schema, plan.oldest_rows, params))
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    del tables
    return table.to_pandas(self_destruct=True, split_blocks=True)


def _newest_rows(path: str, columns: list[str], schema, count: int, params: Params) -> pa.Table:
    """The newest `count` rows of one batch (by the date column, else its last rows), read one
    row group at a time: a rows window inside a batch of millions never holds the batch."""
    parquet = pq.ParquetFile(path)
    total = parquet.metadata.num_rows
    date_column = params.schema.date_column
    if date_column and date_column in columns:
        dates = parquet.read(columns=[date_column]).column(0).to_numpy()
        keep = np.sort(np.argsort(dates, kind="stable")[total - count :])
    else:
        keep = np.arange(total - count, total)
    pieces, start = [], 0
    for group in range(parquet.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        local = keep[(keep >= start) & (keep < start + size)] - start
        if len(local):
            rows = parquet.read_row_group(group, columns=columns).take(local)
            pieces.append(rows.cast(pa.schema([schema.field(c) for c in columns])))
        start += size
    return pa.concat_tables(pieces)


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


def stored_schema(params: Params, kinds: dict[str, str]) -> dict[str, Any]:
    return {
        "fingerprint": params.schema.fingerprint(),
        "schema": params.sections("schema")["schema"],
        "columns": kinds,
    }


def schema_conflicts(
    root: Path, params: Params, kinds: dict[str, str], rows: int
) -> list[dict[str, Any]]:
    """Columns whose kind differs from what the schema's folder already holds (empty: none)."""
    path = root / dataset_dir(params) / SCHEMA_FILE
    if not path.exists():
        return []
    known = json.loads(path.read_text())["columns"]
    return [
        {
            "column": col,
            "check": "dataset_schema",
            "failed_count": rows,
            "examples": [],
            "expected": known[col],
            "observed": kind,
        }
        for col, kind in kinds.items()
        if known.get(col, kind) != kind
    ]


class BatchWriter:
    """A validated batch written chunk by chunk into a temp file beside its final name:
    `commit` renames it in (replacing that date's batch; readers never see half of one),
    `abort` removes it and the dataset is as it was."""

    def __init__(self, root: Path, params: Params, date: str, schema: pa.Schema):
        self.root, self.params = root, params
        self.relative = dataset_dir(params) / f"{date}.parquet"
        folder = root / dataset_dir(params)
        self.created = [d for d in (root / DATASET_DIR, folder) if not d.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):  # left by a run that was killed (one writer at a time)
            stale.unlink()
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{date}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        self.schema = schema
        self.writer = pq.ParquetWriter(self.tmp, schema)

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
        self.writer.write_table(table)

    def commit(self, kinds: dict[str, str]) -> Path:
        self.writer.close()
        folder = self.root / dataset_dir(self.params)
        if not (folder / SCHEMA_FILE).exists():
            atomic_write_json(folder / SCHEMA_FILE, stored_schema(self.params, kinds))
        os.replace(self.tmp, self.root / self.relative)
        return self.relative

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)
        for folder in reversed(self.created):  # the dataset stays as it was, folders included
            folder.rmdir()


def data_version(root: Path) -> str:
    """The dataset's hash as DVC computes it for the `data/dataset` output (md5 of the .dir).

    In a DVC project the hash of each file comes from DVC's own state (keyed by inode, mtime
    and size), as in `dvc status`: only new or changed files are read. Elsewhere (a plain
    folder) every file is hashed."""
    from dvc_data.hashfile.build import build

    path = str(root / DATASET_DIR)
    if (root / ".dvc").is_dir():
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            _, _, obj = build(
                repo.cache.local, path, repo.fs, "md5", ignore=repo.dvcignore, dry_run=True
            )
        return obj.hash_info.value
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), path, fs, "md5", dry_run=True)
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
    with a blank reads as floats), True is "True".

    Each distinct value is converted once and the result shares one text object per category
    (8 bytes a row, not a string a row: a window of millions of rows stays small). An object
    column is converted value by value: factorizing would merge True with 1 and 1.0 with "1"
    before they are told apart."""

    def text(value: Any) -> Any:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return np.nan
        if isinstance(value, (bool, np.bool_)):
            return str(bool(value))
        if isinstance(value, (int, float, np.number)) and float(value).is_integer():
            return str(int(value))
        return str(value)

    if series.dtype == object:
        values = [text(v) for v in series]
        return pd.Series(values, index=series.index, dtype=object)
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    labels = np.array([text(v) for v in uniques] + [np.nan], dtype=object)
    return pd.Series(labels[codes], index=series.index, dtype=object)  # code -1 (null): NaN


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
        # Row positions in date order (stable: ties keep the file order), then one `take` per
        # side: the window is copied once, never sorted as a whole frame first.
        order = np.argsort(df[schema.date_column].to_numpy(), kind="stable")
        train_df, holdout = df.take(order[:-n_holdout]), df.take(order[-n_holdout:])
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


@dataclass
class WindowSplit:
    """The window's rows split into training rows and the holdout, and what decided it."""

    plan: WindowPlan
    task: str
    how: str  # how the task was decided
    train: pd.DataFrame
    holdout: pd.DataFrame

    def summary(self, date_column: str | None) -> dict[str, Any]:
        """The window in force, its dates, its rows and the holdout's (MLflow, JSON summary)."""
        out = {**self.plan.summary(), "train_rows": len(self.train)}
        out["holdout_rows"] = len(self.holdout)
        if date_column:
            dates = self.holdout[date_column]
            out["holdout_from"], out["holdout_to"] = str(dates.min()), str(dates.max())
        return out


def read_split(root: Path, params: Params, budget: Budget) -> WindowSplit:
    """The window of `train.window`, loaded within the memory budget, and split (train,
    evaluate and register split the same window the same way: one holdout for all)."""
    plan = window_plan(root, params)
    columns = model_columns(params)
    budget.check("load", plan.rows, len(columns), LOAD_BYTES_PER_CELL, f"window {plan.window}")
    df = load_window(root, params, plan)
    name = params.schema.target
    if name not in df:
        raise PipelineError(f"target column '{name}' is not in the dataset")
    task, how = resolve_task(params, df[name])
    train_df, holdout = split(df, params, task)
    return WindowSplit(plan, task, how, train_df, holdout)


def encoded_width(X: pd.DataFrame, params: Params) -> int:
    """Columns of the model's encoded input: each numeric feature, one per category."""
    categories = sum(int(X[c].nunique()) for c in params.schema.categorical_features)
    return len(params.schema.numeric_features) + categories


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
