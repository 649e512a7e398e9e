"""Shared helpers of the pipeline stages: params, errors and exit codes, atomic writes, the CLI.

Exit codes of every `python -m pipelines.<stage>` command (the DAG branches on them):

    0  success; the last stdout line is a one-line JSON summary (DockerOperator XCom)
    1  unexpected failure (a traceback is printed)
    2  bad input or configuration: one-line error on stderr naming the problem
    3  validate only: the batch failed validation and was moved to data/quarantine/<date>/
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_QUARANTINED = 3

DEFAULT_PARAMS = "params.yaml"
DEFAULT_MODEL_NAME = "conveyor"

# Workspace layout, relative to the project root (the directory holding params.yaml).
LANDING_DIR = Path("data/landing")  # ingest output: the batch of one logical date
DATASET_DIR = Path("data/dataset")  # validated, versioned dataset: one parquet file per date
QUARANTINE_DIR = Path("data/quarantine")  # failed batches: <date>/batch.parquet + report.json
MODEL_DIR = Path("models/model")  # MLflow sklearn model directory
TRAIN_RUN_FILE = Path("models/train_run.json")  # MLflow run id + lineage, read by later stages
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


def load_params(path: str | os.PathLike = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open() as fh:
            params = yaml.safe_load(fh)
    except OSError as exc:
        raise PipelineError(f"cannot read params file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PipelineError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise PipelineError(f"params file {path} must hold a mapping")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name)
    if not isinstance(value, dict):
        raise PipelineError(f"params: section '{name}' is missing")
    return value


def feature_columns(params: dict[str, Any]) -> tuple[list[str], list[str]]:
    schema = section(params, "schema")
    numeric = list(schema.get("numeric_features") or [])
    categorical = list(schema.get("categorical_features") or [])
    if not numeric and not categorical:
        raise PipelineError("params: schema lists no numeric_features and no categorical_features")
    return numeric, categorical


def logical_date(params: dict[str, Any]) -> dt.date:
    """`ingest.date`: the logical date of the batch (YYYY-MM-DD)."""
    raw = section(params, "ingest").get("date")
    if isinstance(raw, dt.date):
        return raw
    try:
        return dt.date.fromisoformat(str(raw))
    except ValueError as exc:
        raise PipelineError(f"ingest.date '{raw}' is not a YYYY-MM-DD date") from exc


def model_name(params: dict[str, Any]) -> str:
    configured = (params.get("register") or {}).get("model_name")
    return configured or os.environ.get("MODEL_NAME") or DEFAULT_MODEL_NAME


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


def atomic_write_parquet(path: Path, frame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
StageFn = Callable[[dict[str, Any], Path], dict[str, Any]]


def run_cli(stage: str, fn: StageFn, argv: list[str] | None = None, doc: str | None = None) -> int:
    """Thin CLI shared by every stage: `python -m pipelines.<stage> [--params params.yaml]`.

    The project root is the directory holding the params file, so `dvc repro` (which runs from
    the repo root) and direct calls are the same entry point.
    """
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{stage}", description=doc)
    parser.add_argument(
        "--params", default=DEFAULT_PARAMS, help="params file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    params_path = Path(args.params).resolve()
    try:
        summary = fn(load_params(params_path), params_path.parent)
    except PipelineError as exc:
        quarantined = isinstance(exc, Quarantined)
        print(f"{stage}: {'quarantined' if quarantined else 'error'}: {exc}", file=sys.stderr)
        if quarantined:
            print(json.dumps(exc.summary, sort_keys=True, default=str))
        return exc.exit_code
    print(json.dumps(summary, sort_keys=True, default=str))
    return EXIT_OK
