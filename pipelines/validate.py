"""Stage `validate`: gate the landed batch before it may join the versioned dataset.

Ingest lands the batch (data/landing/); validate checks it with pandera against the schema and
thresholds in params.yaml (columns present, numeric types, ranges, null rates, unique non-null
ids, dates that parse — datetimes, date text or whole-number years —, label presence: no
missing target and at least `min_classes` distinct values, a numeric target for regression,
at least `min_rows` rows, column kinds matching the dataset folder's). Then:

  - pass: the batch's schema columns (numeric features as float, categorical ones as text,
    dates parsed) are written atomically to data/dataset/<schema fingerprint>/<date>.parquet,
    replacing an earlier batch of the same date (idempotent); exit code 0;
  - fail: the batch is MOVED to data/quarantine/<date>/batch.parquet (still readable), with
    batch.json (ingest metadata) and report.json (every failed check: column, check, count,
    examples); the dataset is untouched and the stage exits with code 3 (EXIT_QUARANTINED).

Either way reports/validation.json is the report on the batch, which also lists its unknown
columns (in no schema role and not in `schema.drop_columns`: never stored) and dropped ones.

A batch of any size is checked in bounded memory, a chunk at a time (pipelines/common.py says
how big): pandera checks each chunk's columns, types, ranges, nulls and dates, while what
concerns the whole batch is accumulated and checked at the end: row count, null fraction,
distinct labels, unique ids (a 64-bit hash per id, 8 bytes a row; hashes seen twice are
confirmed on the ids themselves in a second pass) and column kinds. Only the schema's columns
are read. Chunks that pass are written to a temp file; one failing chunk quarantines the whole
batch and the temp file is dropped.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.parquet as pq

from pipelines.common import (
    LANDING_DIR,
    QUARANTINE_DIR,
    VALIDATION_FILE,
    PipelineError,
    Quarantined,
    atomic_write_json,
    chunk_rows,
    replace_dir,
    run_cli,
)
from pipelines.data import (
    BatchWriter,
    as_categories,
    column_kind,
    dataset_dir,
    parse_dates,
    schema_conflicts,
)

if TYPE_CHECKING:
    from pipelines.config import Params

AGGREGATE_CHECKS = ("max_null_fraction", "min_classes", "min_rows")
MAX_EXAMPLES = 5


def build_schema(params: Params) -> pa.DataFrameSchema:
    """The pandera schema of one chunk: what each row must satisfy (dates are checked by
    `check_dates`; what concerns the whole batch, by `BatchCheck.finish`)."""
    schema, rules = params.schema, params.validation
    columns: dict[str, pa.Column] = {}
    for col in schema.numeric_features:
        checks = [pa.Check.in_range(*rules.ranges[col])] if col in rules.ranges else []
        columns[col] = pa.Column(float, checks=checks, nullable=True, coerce=True)
    for col in schema.categorical_features:
        columns[col] = pa.Column(None, nullable=True)
    columns[schema.target] = pa.Column(
        float if schema.task == "regression" else None,
        nullable=False,
        coerce=schema.task == "regression",
    )
    if schema.id_column:
        columns[schema.id_column] = pa.Column(None, nullable=False)
    return pa.DataFrameSchema(columns, strict=False)


def check_dates(batch: pd.DataFrame, column: str) -> tuple[pd.Series, list[dict[str, Any]]]:
    """The parsed date column, and a failure per kind of bad value (null, not a date)."""
    parsed, bad = parse_dates(batch[column])
    failures = []
    nulls = batch[column].isna()
    if nulls.any():
        failures.append(_entry(column, "not_nullable", int(nulls.sum())))
    if bad.any():
        examples = [str(v) for v in batch[column][bad].head(MAX_EXAMPLES)]
        failures.append(_entry(column, "parse_datetime", int(bad.sum()), examples))
    return parsed, failures


def _entry(column: str | None, check: str, count: int, examples=(), **extra) -> dict[str, Any]:
    return {
        "column": column,
        "check": check,
        "failed_count": count,
        "examples": list(examples),
        **extra,
    }


def failure_report(cases: pd.DataFrame) -> list[dict[str, Any]]:
    """Group pandera's failure cases into one entry per (column, check)."""
    entries = []
    cases = cases.assign(column=cases["column"].astype(object).where(cases["column"].notna(), None))
    for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=True):
        column = None if pd.isna(column) else str(column)
        examples = [str(v) for v in group["failure_case"].head(MAX_EXAMPLES)]
        entries.append(_entry(column, str(check), int(len(group)), examples))
    return entries


def column_notes(columns: list[str], params: Params) -> dict[str, list[str]]:
    """Columns of the batch that are not stored: unknown ones, and those dropped on purpose."""
    known = set(params.schema.stored_columns)
    dropped = set(params.schema.drop_columns)
    return {
        "unknown_columns": [c for c in columns if c not in known and c not in dropped],
        "dropped_columns": [c for c in columns if c in dropped],
    }


def _id_hashes(ids: pd.Series) -> np.ndarray:
    present = ids.dropna()
    return pd.util.hash_pandas_object(present, index=False).to_numpy()


class BatchCheck:
    """The checks of one batch, fed chunk by chunk; `finish` adds those of the whole batch."""

    def __init__(self, params: Params, columns: list[str]):
        self.params = params
        self.schema = build_schema(params)
        self.missing = [c for c in params.schema.stored_columns if c not in columns]
        # pandera names only the first missing column: every one is reported, the rest checked
        self.schema = self.schema.remove_columns(
            [c for c in self.missing if c in self.schema.columns]
        )
        self.failures: dict[tuple[str | None, str], dict[str, Any]] = {
            (col, "column_in_dataframe"): _entry(col, "column_in_dataframe", 1)
            for col in self.missing
        }
        self.rows = 0
        self.nulls: Counter[str] = Counter()
        self.labels: set[Any] = set()
        self.id_hashes: list[np.ndarray] = []
        self.kinds: dict[str, str] = {}

    def _merge(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            key = (entry["column"], entry["check"])
            if key not in self.failures:
                self.failures[key] = entry
                continue
            known = self.failures[key]
            known["failed_count"] += entry["failed_count"]
            room = MAX_EXAMPLES - len(known["examples"])
            known["examples"] += entry["examples"][: max(room, 0)]

    def add(self, chunk: pd.DataFrame) -> pd.DataFrame | None:
        """Check a chunk; return its rows as they are stored if the batch has not failed yet."""
        schema, rules = self.params.schema, self.params.validation
        self.rows += len(chunk)
        for col in schema.features:
            if col in chunk:
                self.nulls[col] += int(chunk[col].isna().sum())
        if schema.target in chunk and len(self.labels) < rules.min_classes:
            self.labels.update(chunk[schema.target].dropna().unique().tolist())
        if schema.id_column and schema.id_column in chunk:
            self.id_hashes.append(_id_hashes(chunk[schema.id_column]))
        chunk = chunk.copy()
        if schema.date_column and schema.date_column in chunk:
            chunk[schema.date_column], date_failures = check_dates(chunk, schema.date_column)
            self._merge(date_failures)
        try:
            coerced = self.schema.validate(chunk, lazy=True)
        except pa.errors.SchemaErrors as exc:
            self._merge(failure_report(exc.failure_cases))
            return None
        if self.failures:
            return None
        stored = coerced[schema.stored_columns].copy()
        for col in schema.categorical_features:
            stored[col] = as_categories(stored[col])
        for col in stored.columns:
            kind = column_kind(stored[col])
            self.kinds[col] = kind if self.kinds.get(col, kind) == kind else "mixed"
        return stored.reset_index(drop=True)

    def finish(
        self, root: Path | None, ids: Callable[[], Iterator[pd.Series]]
    ) -> list[dict[str, Any]]:
        """Every failure of the batch (empty: it passed). `ids` reads the id column again, to
        confirm ids whose hashes were seen twice."""
        schema, rules = self.params.schema, self.params.validation
        aggregates = []
        if self.rows < rules.min_rows:
            aggregates.append(_entry(None, "min_rows", 1, observed=self.rows))
        for col in schema.features:
            if col in self.missing or not self.rows:
                continue
            fraction = self.nulls[col] / self.rows
            if fraction > rules.max_null_fraction:
                aggregates.append(
                    _entry(col, "max_null_fraction", self.nulls[col], observed=round(fraction, 4))
                )
        if schema.target not in self.missing and len(self.labels) < rules.min_classes:
            aggregates.append(_entry(schema.target, "min_classes", 1, observed=len(self.labels)))
        if schema.id_column and schema.id_column not in self.missing:
            aggregates += self._duplicate_ids(ids)
        self._merge(aggregates)
        if not self.failures and root is not None:
            self._merge(schema_conflicts(root, self.params, self.kinds, self.rows))
        limits = rules.model_dump()
        failures = list(self.failures.values())
        for entry in failures:
            if entry["check"] in AGGREGATE_CHECKS:
                entry["limit"] = limits[entry["check"]]
        return failures

    def _duplicate_ids(self, ids: Callable[[], Iterator[pd.Series]]) -> list[dict[str, Any]]:
        hashes = np.sort(np.concatenate(self.id_hashes)) if self.id_hashes else np.array([])
        twice = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
        if not len(twice):
            return []
        counts: Counter[Any] = Counter()
        for column in ids():  # only ids whose hash was seen twice: few, in any real batch
            present = column.dropna()
            counts.update(present[np.isin(_id_hashes(present), twice)].tolist())
        duplicated = {value: n for value, n in counts.items() if n > 1}
        if not duplicated:
            return []  # 64-bit hashes of different ids that collided
        examples = [str(v) for v in list(duplicated)[:MAX_EXAMPLES]]
        return [
            _entry(
                self.params.schema.id_column, "field_uniqueness", sum(duplicated.values()), examples
            )
        ]


def check_batch(
    batch: pd.DataFrame, params: Params, root: Path | None = None
) -> tuple[pd.DataFrame | None, list[dict[str, Any]]]:
    """Validate a whole batch in memory: (the frame to store, []) when it passes, (None,
    failures) when not. With `root`, the stored column kinds must also match the folder's."""
    check = BatchCheck(params, list(batch.columns))
    stored = check.add(batch)
    id_column = params.schema.id_column
    failures = check.finish(root, lambda: iter([batch[id_column]]))
    return (None, failures) if failures else (stored, [])


def _landed_chunks(path: Path, columns: list[str]) -> Iterator[pd.DataFrame]:
    """The landed batch's `columns`, chunk by chunk (sized by the bytes of those columns)."""
    parquet = pq.ParquetFile(path)
    meta = parquet.metadata
    size = sum(
        meta.row_group(i).column(j).total_uncompressed_size
        for i in range(meta.num_row_groups)
        for j in range(meta.num_columns)
        if meta.schema.column(j).name in columns
    )
    rows = chunk_rows(size / max(meta.num_rows, 1))
    for part in parquet.iter_batches(batch_size=rows, columns=columns):
        yield part.to_pandas()


def stored_arrow_schema(params: Params, landed: pyarrow.Schema) -> pyarrow.Schema:
    """The types of a stored batch: numeric features float, categories text, dates in
    microseconds, a regression target float; the target and the id as they landed."""
    schema = params.schema
    kinds = {col: pyarrow.float64() for col in schema.numeric_features}
    kinds |= {col: pyarrow.string() for col in schema.categorical_features}
    if schema.date_column:
        kinds[schema.date_column] = pyarrow.timestamp("us")
    if schema.task == "regression":
        kinds[schema.target] = pyarrow.float64()
    return pyarrow.schema(
        [(col, kinds.get(col) or landed.field(col).type) for col in schema.stored_columns]
    )


def _quarantine(root: Path, date: str, landing: Path, report: dict[str, Any]) -> Path:
    target = root / QUARANTINE_DIR / date
    report = {**report, "status": "quarantined"}

    def build(tmp: Path) -> None:
        for name in ("batch.parquet", "batch.json"):
            if (landing / name).exists():
                try:  # a second name for the same file: no copy of a large batch
                    os.link(landing / name, tmp / name)
                except OSError:
                    shutil.copy2(landing / name, tmp / name)
        atomic_write_json(tmp / "report.json", report)

    replace_dir(target, build)
    (landing / "batch.parquet").unlink(missing_ok=True)  # moved: it must not be promoted later
    return target


def _landed_date(landing: Path) -> str:
    """The logical date the landed batch was ingested for (from ingest's batch.json)."""
    try:
        return str(json.loads((landing / "batch.json").read_text())["date"])
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"landed batch has no readable {LANDING_DIR / 'batch.json'}") from exc


def check_landed(
    params: Params, root: Path, batch_file: Path, date: str
) -> tuple[BatchCheck, list[dict[str, Any]], Path | None]:
    """Check the landed batch chunk by chunk, writing the passing chunks: (the checks, the
    failures, the stored batch's path in the dataset or None)."""
    landed = pq.read_schema(batch_file)
    check = BatchCheck(params, landed.names)
    writer = None
    if not check.missing:
        writer = BatchWriter(root, params, date, stored_arrow_schema(params, landed))
    # Only the schema's columns are read: unknown and dropped ones are never stored, and a
    # free-text column of an export costs nothing here (it stays in the landed file).
    read = [c for c in landed.names if c in set(params.schema.stored_columns)]
    try:
        for chunk in _landed_chunks(batch_file, read):
            stored = check.add(chunk)
            if stored is not None and writer is not None:
                writer.write(stored)
        id_column = params.schema.id_column
        failures = check.finish(
            root, lambda: (c[id_column] for c in _landed_chunks(batch_file, [id_column]))
        )
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if failures or writer is None:
        if writer is not None:
            writer.abort()
        return check, failures, None
    return check, [], writer.commit(check.kinds)


def validate(params: Params, root: Path) -> dict[str, Any]:
    landing = root / LANDING_DIR
    batch_file = landing / "batch.parquet"
    if not batch_file.exists():
        raise PipelineError(f"no landed batch at {LANDING_DIR / 'batch.parquet'}: run ingest first")
    date = _landed_date(landing)
    check, failures, path = check_landed(params, root, batch_file, date)

    target = params.schema.target
    report = {
        "date": date,
        "rows": check.rows,
        "dataset": str(dataset_dir(params)),
        **column_notes(pq.read_schema(batch_file).names, params),
        "failures": failures,
    }
    if failures:
        where = _quarantine(root, date, landing, report)
        atomic_write_json(root / VALIDATION_FILE, {**report, "status": "quarantined"})
        names = ", ".join(
            sorted(
                {f"{f['check']}({f['column']})" if f["column"] else f["check"] for f in failures}
            )
        )
        missing_target = any(
            f["check"] == "column_in_dataframe" and f["column"] == target for f in failures
        )
        head = f"target column '{target}' missing; " if missing_target else ""
        rel = where.relative_to(root)
        raise Quarantined(
            f"batch {date} failed {len(failures)} check(s): {head}{names}; "
            f"moved to {rel / 'batch.parquet'}, report {rel / 'report.json'}",
            summary={
                "stage": "validate",
                "date": date,
                "status": "quarantined",
                "rows": check.rows,
                "report": str(rel / "report.json"),
            },
        )

    atomic_write_json(root / VALIDATION_FILE, {**report, "status": "passed"})
    return {
        "stage": "validate",
        "date": date,
        "status": "passed",
        "rows": check.rows,
        "path": str(path),
        "unknown_columns": report["unknown_columns"],
    }


def main(argv: list[str] | None = None) -> int:
    return run_cli("validate", validate, argv, doc=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
