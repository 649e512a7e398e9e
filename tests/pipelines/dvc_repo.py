"""Temporary copies of the repository to run `dvc repro` in, and the commands run there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
COPY = (
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".dvc/",
    "pipelines/",
    "data/",
    "models/",
    "reports/",
)


def run(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    # No deployment wiring from the caller's environment. PYTHONDONTWRITEBYTECODE is dropped
    # too: with it, every stage process recompiles sklearn, mlflow & co. (~20 s per stage).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "AWS_", "DVC_"))
        and k not in ("MODEL_NAME", "CONVEYOR_IMAGE", "PYTHONDONTWRITEBYTECODE")
    }
    # One OpenMP thread: on 2 busy cores, HistGradientBoosting's threads wait for each other
    # at every barrier (measured: 33 s instead of 1.5 s for one fit of 200 iterations).
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def set_params(repo: Path, *assignments: str) -> None:
    run(repo, "python", "-m", "pipelines.params", *(f"--set={a}" for a in assignments))


def stages_run(proc: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", proc.stdout + proc.stderr)


def copy_repo(dest: Path) -> Path:
    """The tracked files the pipeline needs, in a fresh git repository of their own."""
    tracked = subprocess.run(
        ["git", "ls-files", *COPY], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in tracked:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    assert (dest / "dvc.yaml").exists() and (dest / ".dvc" / "config").exists()
    run(dest, "git", "init", "-q")
    return dest


def commit(repo: Path) -> None:
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "copy")
