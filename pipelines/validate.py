"""Stage `validate`: gate the landed batch before it may reach the versioned dataset.

Ingest lands the batch (data/landing/); validate checks it with pandera against the schema and
thresholds in params.yaml (columns present, numeric types, ranges, null rates, unique non-null
ids, parseable dates, label presence: no missing target and at least `min_classes` classes,
at least `min_rows` rows). Then:

  - pass: the batch (types coerced) is written atomically to data/dataset/<date>.parquet,
    replacing an earlier batch of the same date (idempotent); exit code 0;
  - fail: the batch is MOVED to data/quarantine/<date>/batch.parquet (still readable), with
    batch.json (ingest metadata) and report.json (every failed check: column, check, count,
    examples); the dataset is untouched and the stage exits with code 3 (EXIT_QUARANTINED).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa

from pipelines.common import (
    DATASET_DIR,
    LANDING_DIR,
    QUARANTINE_DIR,
    PipelineError,
    Quarantined,
    atomic_write_json,
    atomic_write_parquet,
    feature_columns,
    replace_dir,
    run_cli,
    section,
)

AGGREGATE_CHECKS = ("max_null_fraction", "min_classes", "min_rows")


def build_schema(params: dict[str, Any]) -> pa.DataFrameSchema:
    """The pandera schema of one batch, built from `schema` and `validation` in params."""
    schema = section(params, "schema")
    rules = params.get("validation") or {}
    numeric, categorical = feature_columns(params)
    target = schema.get("target")
    if not target:
        raise PipelineError("params: schema.target is not set")
    max_null = float(rules.get("max_null_fraction", 1.0))
    ranges = rules.get("ranges") or {}

    def null_rate() -> pa.Check:
        return pa.Check(
            lambda s: bool(s.isna().mean() <= max_null),
            name="max_null_fraction",
            ignore_na=False,
        )

    columns: dict[str, pa.Column] = {}
    for col in numeric:
        checks = [null_rate()]
        if col in ranges:
            lo, hi = ranges[col]
            checks.append(pa.Check.in_range(lo, hi))
        columns[col] = pa.Column(float, checks=checks, nullable=True, coerce=True)
    for col in categorical:
        columns[col] = pa.Column(None, checks=[null_rate()], nullable=True)

    min_classes = int(rules.get("min_classes", 2))
    columns[target] = pa.Column(
        None,
        nullable=False,
        checks=[pa.Check(lambda s: bool(s.nunique() >= min_classes), name="min_classes")],
    )
    if schema.get("id_column"):
        columns[schema["id_column"]] = pa.Column(None, nullable=False, unique=True)
    if schema.get("date_column"):
        columns[schema["date_column"]] = pa.Column("datetime64[ns]", nullable=False, coerce=True)

    min_rows = int(rules.get("min_rows", 1))
    return pa.DataFrameSchema(
        columns,
        checks=[pa.Check(lambda df: len(df) >= min_rows, name="min_rows")],
        strict=False,
    )


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


def check_batch(batch: pd.DataFrame, params: dict[str, Any]) -> tuple[pd.DataFrame | None, list]:
    """Validate a batch: (coerced frame, []) when it passes, (None, failures) when it fails."""
    schema = build_schema(params)
    # pandera names only the first missing column: report every one, check the rest as usual
    missing = [col for col in schema.columns if col not in batch.columns]
    failures = [{"column": col, "check": "column_in_dataframe", "failed_count": 1,
                 "examples": []} for col in missing]
    try:
        coerced = schema.remove_columns(missing).validate(batch, lazy=True)
    except pa.errors.SchemaErrors as exc:
        failures += failure_report(exc.failure_cases, batch)
    if not failures:
        return coerced, []
    rules = params.get("validation") or {}
    limits = {"max_null_fraction": rules.get("max_null_fraction"),
              "min_rows": rules.get("min_rows"), "min_classes": rules.get("min_classes")}
    for entry in failures:
        if limits.get(entry["check"]) is not None:
            entry["limit"] = limits[entry["check"]]
    return None, failures


def _quarantine(root: Path, date: str, landing: Path, failures: list, rows: int) -> Path:
    target = root / QUARANTINE_DIR / date
    report = {"date": date, "status": "quarantined", "rows": rows, "failures": failures}

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


def validate(params: dict[str, Any], root: Path) -> dict[str, Any]:
    landing = root / LANDING_DIR
    batch_file = landing / "batch.parquet"
    if not batch_file.exists():
        raise PipelineError(f"no landed batch at {LANDING_DIR / 'batch.parquet'}: run ingest first")
    batch = pd.read_parquet(batch_file)
    date = _landed_date(landing)

    target = section(params, "schema").get("target")
    coerced, failures = check_batch(batch, params)
    if failures:
        where = _quarantine(root, date, landing, failures, len(batch))
        names = ", ".join(sorted({f"{f['check']}({f['column']})" if f["column"] else f["check"]
                                  for f in failures}))
        missing_target = any(f["check"] == "column_in_dataframe" and f["column"] == target
                             for f in failures)
        head = f"target column '{target}' missing; " if missing_target else ""
        rel = where.relative_to(root)
        raise Quarantined(
            f"batch {date} failed {len(failures)} check(s): {head}{names}; "
            f"moved to {rel / 'batch.parquet'}, report {rel / 'report.json'}",
            summary={"stage": "validate", "date": date, "status": "quarantined",
                     "rows": len(batch), "report": str(rel / "report.json")},
        )

    out = root / DATASET_DIR / f"{date}.parquet"
    atomic_write_parquet(out, coerced)
    return {"stage": "validate", "date": date, "status": "passed", "rows": len(coerced),
            "path": str(DATASET_DIR / f"{date}.parquet")}


def main(argv: list[str] | None = None) -> int:
    return run_cli("validate", validate, argv, doc=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
