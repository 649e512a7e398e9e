"""The DVC workspace the DAG's task containers share (a named volume at /workspace).

    python -m pipelines.workspace prepare [--workspace /workspace] [--source-dir /app]
    python -m pipelines.workspace run [--date D] [--source URI] [--train-json '{...}']
                                      [--min-improvement X] [--set key=value ...]
                                      [--emit reports/registration.json] -- COMMAND ...

`prepare` makes /workspace a DVC project without git (`dvc init --no-scm`) whose DVC state
lives on the volume (SITE_CACHE), copies the pipeline definition (dvc.yaml and the stage code
it depends on) from the image, and points the default DVC remote at $DVC_REMOTE_URL (with
$AWS_ENDPOINT_URL as its endpoint; credentials come from the AWS variables of the task's
private environment, never written to the config).

`run` gives the workspace the params of one DAG run, then runs COMMAND in it and exits with
COMMAND's status (so a stage's distinct exit codes reach the DAG). The params are rebuilt every
time from the image's params.yaml plus the run's overrides, so any task of any run can be re-run
alone and sees exactly its own run's params. `--emit FILE` prints FILE's JSON on one line after
a successful COMMAND (the DockerOperator XCom).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipelines.common import EXIT_BAD_INPUT, PipelineError
from pipelines.params import set_params

REMOTE_NAME = "storage"
# DVC's site cache holds its state: the hash of every file it has read, keyed by inode, mtime
# and size. By default it is /var/tmp/dvc, which dies with each task container, so every `dvc
# repro` and `dvc push` of a new container re-read every batch of data/dataset (measured: all
# 200 files of 200 days read again by one `dvc repro validate`). On the volume it lasts: only
# the new day's file is read.
SITE_CACHE = ".dvc/site_cache"


def _dvc(workspace: Path, *args: str) -> None:
    proc = subprocess.run(["dvc", *args], cwd=workspace, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise PipelineError(f"dvc {' '.join(args)} failed: {detail[-1] if detail else '?'}")


def sync_code(workspace: Path, source_dir: Path) -> None:
    """dvc.yaml and the stage code it lists as deps come from the image (code, not state)."""
    shutil.copyfile(source_dir / "dvc.yaml", workspace / "dvc.yaml")
    code = source_dir / "pipelines"
    if code.is_dir() and code.resolve() != (workspace / "pipelines").resolve():
        shutil.copytree(
            code,
            workspace / "pipelines",
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )


def prepare(workspace: Path, source_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    if not (source_dir / "dvc.yaml").is_file():
        raise PipelineError(f"no dvc.yaml in {source_dir}: not the training image?")
    workspace.mkdir(parents=True, exist_ok=True)
    if not (workspace / ".dvc").is_dir():
        _dvc(workspace, "init", "--no-scm")
    _dvc(workspace, "config", "core.no_scm", "true")
    _dvc(workspace, "config", "core.autostage", "false")
    _dvc(workspace, "config", "core.site_cache_dir", str(workspace / SITE_CACHE))
    sync_code(workspace, source_dir)
    if not (workspace / "params.yaml").is_file():
        shutil.copyfile(source_dir / "params.yaml", workspace / "params.yaml")
    remote = env.get("DVC_REMOTE_URL", "")
    if remote:
        _dvc(workspace, "remote", "add", "--force", "--default", REMOTE_NAME, remote)
        endpoint = env.get("AWS_ENDPOINT_URL", "")
        if endpoint:
            _dvc(workspace, "remote", "modify", REMOTE_NAME, "endpointurl", endpoint)
    else:
        print("workspace: DVC_REMOTE_URL is not set: dvc push will have no remote", file=sys.stderr)
    return {"workspace": str(workspace), "remote": remote or None}


def flatten(prefix: str, value: Any) -> list[str]:
    """{"a": {"b": 1}} under "train" -> ["train.a.b=1"] (values as YAML/JSON scalars); a key
    holding dots (an estimator's import path) is quoted, as pipelines.params reads it."""
    if isinstance(value, dict):
        out: list[str] = []
        for key, sub in value.items():
            part = f'"{key}"' if "." in str(key) else str(key)
            out.extend(flatten(f"{prefix}.{part}" if prefix else part, sub))
        return out
    rendered = value if isinstance(value, str) else json.dumps(value)
    return [f"{prefix}={rendered}"]


def overrides(args: argparse.Namespace) -> list[str]:
    sets: list[str] = []
    if args.date:
        sets.append(f"ingest.date={args.date}")
    if args.source:
        sets.append(f"ingest.source={args.source}")
    if args.train_json:
        try:
            train = json.loads(args.train_json)
        except json.JSONDecodeError as exc:
            raise PipelineError(f"--train-json is not JSON: {exc}") from exc
        if not isinstance(train, dict):
            raise PipelineError("--train-json must be a JSON object of train params")
        sets.extend(flatten("train", train))
    if args.min_improvement not in (None, "", "None"):
        sets.append(f"register.min_improvement={args.min_improvement}")
    sets.extend(args.set or [])
    return sets


def apply_params(workspace: Path, source_dir: Path, sets: list[str]) -> None:
    """params.yaml = the image's defaults + this run's overrides (edited by pipelines.params)."""
    sync_code(workspace, source_dir)
    shutil.copyfile(source_dir / "params.yaml", workspace / "params.yaml")
    if not sets:
        return
    try:
        set_params(workspace / "params.yaml", sets)
    except PipelineError as exc:
        raise PipelineError(f"params override rejected: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.workspace", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("prepare", "run"):
        p = sub.add_parser(name)
        p.add_argument("--workspace", type=Path, default=Path(os.environ.get("WORKSPACE", ".")))
        p.add_argument(
            "--source-dir", type=Path, default=Path(os.environ.get("PIPELINE_DIR", "/app"))
        )
    run = sub.choices["run"]
    run.add_argument("--date", default="")
    run.add_argument("--source", default="")
    run.add_argument("--train-json", default="")
    run.add_argument("--min-improvement", default=None)
    run.add_argument("--set", action="append", metavar="KEY=VALUE")
    run.add_argument("--emit", type=Path, default=None)
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    workspace = args.workspace.resolve()
    try:
        if args.cmd == "prepare":
            print(json.dumps(prepare(workspace, args.source_dir, dict(os.environ))))
            return 0
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            raise PipelineError("run: no command given after --")
        apply_params(workspace, args.source_dir, overrides(args))
    except PipelineError as exc:
        print(f"workspace: error: {exc}", file=sys.stderr)
        return exc.exit_code
    sys.stdout.flush()
    code = subprocess.run(command, cwd=workspace).returncode
    if code == 0 and args.emit is not None:
        try:
            print(json.dumps(json.loads((workspace / args.emit).read_text()), sort_keys=True))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"workspace: error: cannot emit {args.emit}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    return code


if __name__ == "__main__":
    sys.exit(main())
