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
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pandera.pandas as pa

from pipelines.common import (
    LANDING_DIR,
    QUARANTINE_DIR,
    VALIDATION_FILE,
    PipelineError,
    Quarantined,
    atomic_write_json,
    replace_dir,
    run_cli,
)
from pipelines.data import add_batch, as_categories, dataset_dir, parse_dates, schema_conflicts

if TYPE_CHECKING:
    from pipelines.config import Params

AGGREGATE_CHECKS = ("max_null_fraction", "min_classes", "min_rows")


def build_schema(params: Params) -> pa.DataFrameSchema:
    """The pandera schema of one batch (dates are checked by `check_dates`)."""
    schema, rules = params.schema, params.validation

    def null_rate() -> pa.Check:
        return pa.Check(
            lambda s: bool(s.isna().mean() <= rules.max_null_fraction),
            name="max_null_fraction",
            ignore_na=False,
        )

    columns: dict[str, pa.Column] = {}
    for col in schema.numeric_features:
        checks = [null_rate()]
        if col in rules.ranges:
            checks.append(pa.Check.in_range(*rules.ranges[col]))
        columns[col] = pa.Column(float, checks=checks, nullable=True, coerce=True)
    for col in schema.categorical_features:
        columns[col] = pa.Column(None, checks=[null_rate()], nullable=True)

    columns[schema.target] = pa.Column(
        float if schema.task == "regression" else None,
        nullable=False,
        coerce=schema.task == "regression",
        checks=[pa.Check(lambda s: bool(s.nunique() >= rules.min_classes), name="min_classes")],
    )
    if schema.id_column:
        columns[schema.id_column] = pa.Column(None, nullable=False, unique=True)
    return pa.DataFrameSchema(
        columns,
        checks=[pa.Check(lambda df: len(df) >= rules.min_rows, name="min_rows")],
        strict=False,
    )


def check_dates(batch: pd.DataFrame, column: str) -> tuple[pd.Series, list[dict[str, Any]]]:
    """The parsed date column, and a failure per kind of bad value (null, not a date)."""
    parsed, bad = parse_dates(batch[column])
    failures = []
    nulls = batch[column].isna()
    if nulls.any():
        failures.append(
            {
                "column": column,
                "check": "not_nullable",
                "failed_count": int(nulls.sum()),
                "examples": [],
            }
        )
    if bad.any():
        failures.append(
            {
                "column": column,
                "check": "parse_datetime",
                "failed_count": int(bad.sum()),
                "examples": [str(v) for v in batch[column][bad].head(5)],
            }
        )
    return parsed, failures


def failure_report(cases: pd.DataFrame, batch: pd.DataFrame) -> list[dict[str, Any]]:
    """Group pandera's failure cases into one entry per (column, check)."""
    entries = []
    cases = cases.assign(column=cases["column"].astype(object).where(cases["column"].notna(), None))
    for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=True):
        column = None if pd.isna(column) else str(column)
        entry: dict[str, Any] = {
            "column": column,
            "check": str(check),
            "failed_count": int(len(group)),
            "examples": [str(v) for v in group["failure_case"].head(5)],
        }
        if check in AGGREGATE_CHECKS:  # checks of a whole column/frame: report what was seen
            entry["examples"] = []
        if check == "max_null_fraction" and column in batch:
            entry["failed_count"] = int(batch[column].isna().sum())
            entry["observed"] = round(float(batch[column].isna().mean()), 4)
        if check == "min_rows":
            entry["observed"] = int(len(batch))
        if check == "min_classes" and column in batch:
            entry["observed"] = int(batch[column].nunique())
        entries.append(entry)
    return entries


def column_notes(batch: pd.DataFrame, params: Params) -> dict[str, list[str]]:
    """Columns of the batch that are not stored: unknown ones, and those dropped on purpose."""
    known = set(params.schema.stored_columns)
    dropped = set(params.schema.drop_columns)
    return {
        "unknown_columns": [c for c in batch.columns if c not in known and c not in dropped],
        "dropped_columns": [c for c in batch.columns if c in dropped],
    }


def check_batch(
    batch: pd.DataFrame, params: Params, root: Path | None = None
) -> tuple[pd.DataFrame | None, list[dict[str, Any]]]:
    """Validate a batch: (the frame to store, []) when it passes, (None, failures) when not.
    With `root`, the stored column kinds must also match the dataset folder's."""
    schema = params.schema
    # pandera names only the first missing column: report every one, check the rest as usual
    missing = [col for col in schema.stored_columns if col not in batch.columns]
    failures = [
        {"column": col, "check": "column_in_dataframe", "failed_count": 1, "examples": []}
        for col in missing
    ]
    batch = batch.copy()
    if schema.date_column and schema.date_column in batch:
        batch[schema.date_column], date_failures = check_dates(batch, schema.date_column)
        failures += date_failures
    pandera_schema = build_schema(params)
    try:
        coerced = pandera_schema.remove_columns(
            [c for c in missing if c in pandera_schema.columns]
        ).validate(batch, lazy=True)
    except pa.errors.SchemaErrors as exc:
        failures += failure_report(exc.failure_cases, batch)
    if not failures:
        stored = coerced[schema.stored_columns].copy()
        for col in schema.categorical_features:
            stored[col] = as_categories(stored[col])
        failures = schema_conflicts(root, params, stored) if root is not None else []
        if not failures:
            return stored.reset_index(drop=True), []
    limits = params.validation.model_dump()
    for entry in failures:
        if entry["check"] in AGGREGATE_CHECKS:
            entry["limit"] = limits[entry["check"]]
    return None, failures


def _quarantine(root: Path, date: str, landing: Path, report: dict[str, Any]) -> Path:
    target = root / QUARANTINE_DIR / date
    report = {**report, "status": "quarantined"}

    def build(tmp: Path) -> None:
        for name in ("batch.parquet", "batch.json"):
            if (landing / name).exists():
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


def validate(params: Params, root: Path) -> dict[str, Any]:
    landing = root / LANDING_DIR
    batch_file = landing / "batch.parquet"
    if not batch_file.exists():
        raise PipelineError(f"no landed batch at {LANDING_DIR / 'batch.parquet'}: run ingest first")
    batch = pd.read_parquet(batch_file)
    date = _landed_date(landing)

    target = params.schema.target
    stored, failures = check_batch(batch, params, root)
    report = {
        "date": date,
        "rows": len(batch),
        "dataset": str(dataset_dir(params)),
        **column_notes(batch, params),
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
                "rows": len(batch),
                "report": str(rel / "report.json"),
            },
        )

    path = add_batch(root, params, date, stored)
    atomic_write_json(root / VALIDATION_FILE, {**report, "status": "passed"})
    return {
        "stage": "validate",
        "date": date,
        "status": "passed",
        "rows": len(stored),
        "path": str(path),
        "unknown_columns": report["unknown_columns"],
    }


def main(argv: list[str] | None = None) -> int:
    return run_cli("validate", validate, argv, doc=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
