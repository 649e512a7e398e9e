"""Shared helpers of the pipeline stages: errors and exit codes, atomic writes, the CLI.

Exit codes of every `python -m pipelines.<stage>` command (the DAG branches on them):

    0  success; the last stdout line is a one-line JSON summary (DockerOperator XCom)
    1  unexpected failure (a traceback is printed)
    2  bad input or configuration: one-line error on stderr naming the problem
    3  validate only: the batch failed validation and was moved to data/quarantine/<date>/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_QUARANTINED = 3

DEFAULT_PARAMS = "params.yaml"

# How much of a batch ingest and validate hold at a time: CHUNK_ROWS rows, fewer if the rows
# are wide (CHUNK_BYTES of CSV text or of uncompressed Parquet columns). What bounds their
# memory whatever the size of the batch (measured: ~300-400 MB peak for 1M demo rows).
CHUNK_ROWS = 50_000
CHUNK_BYTES = 16 << 20


def chunk_rows(bytes_per_row: float) -> int:
    """Rows per chunk for rows of about `bytes_per_row` bytes."""
    return int(max(1_000, min(CHUNK_ROWS, CHUNK_BYTES // max(bytes_per_row, 1))))


# Workspace layout, relative to the project root (the directory holding params.yaml).
LANDING_DIR = Path("data/landing")  # ingest output: the batch of one logical date
DATASET_DIR = Path("data/dataset")  # validated, versioned: <schema fingerprint>/<date>.parquet
QUARANTINE_DIR = Path("data/quarantine")  # failed batches: <date>/batch.parquet + report.json
MODEL_DIR = Path("models/model")  # MLflow sklearn model directory
TRAIN_RUN_FILE = Path("models/train_run.json")  # MLflow run id + lineage, read by later stages
VALIDATION_FILE = Path("reports/validation.json")  # validate's report on the last batch
METRICS_FILE = Path("reports/metrics.json")
PLOTS_DIR = Path("reports/plots")
REGISTRATION_FILE = Path("reports/registration.json")


class PipelineError(Exception):
    """Bad input or configuration: the stage stops with a one-line message and exit code 2."""

    exit_code = EXIT_BAD_INPUT


class Quarantined(PipelineError):
    """A batch failed validation and was quarantined (exit code 3)."""

    exit_code = EXIT_QUARANTINED

    def __init__(self, message: str, summary: dict[str, Any] | None = None):
        super().__init__(message)
        self.summary = summary or {}


def fingerprint(spec: Any) -> str:
    """A short, stable hash of a JSON-able description (of a schema)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- atomic writes
def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via a temp file in the same directory + rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def replace_dir(target: Path, build: Callable[[Path], None]) -> None:
    """Build a directory next to `target`, then swap it in (the old one survives a failed build)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    old = target.with_name(f".{target.name}.old")
    try:
        build(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- CLI
StageFn = Callable[..., dict[str, Any]]  # (params, root, **options) -> summary


def log(stage: str, message: str) -> None:
    """A progress line on stderr (stdout's last line is the stage's JSON summary)."""
    print(f"{stage}: {message}", file=sys.stderr, flush=True)


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for one-line errors about a library's exception."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def run_cli(
    stage: str,
    fn: StageFn,
    argv: list[str] | None = None,
    doc: str | None = None,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Thin CLI shared by every stage: `python -m pipelines.<stage> [--params params.yaml]`.

    The params file is validated here, once (pipelines/config.py), and the typed params are
    passed to the stage. The project root is the directory holding the params file, so
    `dvc repro` (which runs from the repo root) and direct calls are the same entry point.
    A stage's own `options` (added to the parser) reach it as keyword arguments.
    """
    from pipelines.config import load_params  # config imports this module's errors

    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{stage}", description=doc)
    parser.add_argument(
        "--params", default=DEFAULT_PARAMS, help="params file (default: %(default)s)"
    )
    if options:
        options(parser)
    extra = vars(parser.parse_args(argv))
    params_path = Path(extra.pop("params")).resolve()
    try:
        summary = fn(load_params(params_path), params_path.parent, **extra)
    except PipelineError as exc:
        quarantined = isinstance(exc, Quarantined)
        print(f"{stage}: {'quarantined' if quarantined else 'error'}: {exc}", file=sys.stderr)
        if quarantined:
            print(json.dumps(exc.summary, sort_keys=True, default=str))
        return exc.exit_code
    print(json.dumps(summary, sort_keys=True, default=str))
    return EXIT_OK
