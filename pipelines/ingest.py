"""Stage `ingest`: land the batch of one logical date from the configured source.

Data flow (ingest lands, validate promotes):

    source --ingest--> data/landing/{batch.parquet,batch.json}
           --validate--> data/dataset/<date>.parquet   (pass: the versioned dataset, DVC-tracked)
                     or  data/quarantine/<date>/        (fail: never trained on, exit code 3)

Ingest only lands the batch; the versioned dataset grows one file per logical date, written by
`validate` once the batch passed. Re-ingesting a date therefore replaces that date's file and
never duplicates rows, and a failing batch never reaches the data `train` reads.

Sources (`ingest.source` in params.yaml; `{date}` / `{date:%Y/%m/%d}` is filled with the date):
  - `demo`: the built-in generator (pipelines/demo.py), deterministic in (date, seed, rows);
  - a local CSV/Parquet file, directory or glob;
  - `s3://bucket/prefix/...` (file, prefix or glob) on any S3-compatible store: credentials from
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, endpoint from AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines import demo
from pipelines.common import (
    LANDING_DIR,
    PipelineError,
    atomic_write_json,
    first_line,
    replace_dir,
    run_cli,
)

if TYPE_CHECKING:
    from pipelines.config import Params

SUPPORTED = (".csv", ".csv.gz", ".parquet", ".pq")


def _filesystem(uri: str):
    import fsspec

    options: dict[str, Any] = {}
    if uri.startswith("s3://"):
        options["skip_instance_cache"] = True  # read credentials from the environment now
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
    return fsspec.core.url_to_fs(uri, **options)


def _list_files(uri: str) -> tuple[Any, list[str]]:
    fs, path = _filesystem(uri)
    try:
        if any(ch in path for ch in "*?["):
            files = sorted(fs.glob(path))
        elif fs.isdir(path):
            files = sorted(fs.find(path))
        elif fs.exists(path):
            files = [path]
        else:
            files = []
    except Exception as exc:  # network, credentials, permissions: name the source and the cause
        raise PipelineError(f"source '{uri}' is unreadable: {first_line(exc)}") from exc
    files = [f for f in files if f.lower().endswith(SUPPORTED)]
    if not files:
        raise PipelineError(f"source '{uri}' matched no CSV/Parquet file")
    return fs, files


def read_source(source: str, date: dt.date, params: Params) -> pd.DataFrame:
    """Read the batch of `date` from `source` (see the module docstring)."""
    if source == "demo":
        return demo.generate(date, seed=params.ingest.demo.seed, rows=params.ingest.demo.rows)
    try:
        uri = source.format(date=date)
    except (KeyError, IndexError, ValueError) as exc:
        raise PipelineError(f"source '{source}': bad placeholder ({exc}); use {{date}}") from exc
    fs, files = _list_files(uri)
    frames = []
    for name in files:
        try:
            with fs.open(name, "rb") as fh:
                if name.lower().endswith((".parquet", ".pq")):
                    frames.append(pd.read_parquet(fh))
                else:
                    compression = "gzip" if name.lower().endswith(".gz") else None
                    frames.append(pd.read_csv(fh, compression=compression))
        except Exception as exc:
            raise PipelineError(f"cannot read '{name}': {first_line(exc)}") from exc
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _storable(batch: pd.DataFrame) -> pd.DataFrame:
    """Mixed-type object columns (e.g. CSV text + Parquet timestamps) become text, nulls kept:
    the landed batch stays raw and validate coerces the types it expects."""
    batch = batch.rename(columns=str)
    for col in batch.columns:
        if batch[col].dtype == object:
            kinds = {type(v) for v in batch[col].dropna()}
            if len(kinds) > 1:
                batch[col] = batch[col].map(lambda v: v if pd.isna(v) else str(v))
    return batch


def ingest(params: Params, root: Path) -> dict[str, Any]:
    """Read the batch of `ingest.date` and land it in data/landing/ (replacing the last one)."""
    source = params.ingest.source.strip()
    if not source:
        raise PipelineError("ingest.source is empty")
    date = params.ingest.date
    batch = _storable(read_source(source, date, params))
    if batch.empty or len(batch.columns) == 0:
        raise PipelineError(f"batch for {date} from '{source}' is empty")

    meta = {
        "date": date.isoformat(),
        "source": source,
        "rows": len(batch),
        "columns": [str(c) for c in batch.columns],
    }

    def build(tmp: Path) -> None:
        batch.to_parquet(tmp / "batch.parquet", index=False)
        atomic_write_json(tmp / "batch.json", meta)

    replace_dir(root / LANDING_DIR, build)
    return {
        "stage": "ingest",
        **{k: meta[k] for k in ("date", "source", "rows")},
        "path": str(LANDING_DIR / "batch.parquet"),
    }


def main(argv: list[str] | None = None) -> int:
    return run_cli("ingest", ingest, argv, doc=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
