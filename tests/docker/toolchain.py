"""Helpers of the container toolchain tests: bounded commands, the Docker CLI, env files.
Every container, volume and network a test creates carries LABEL and is removed at the end.
LABEL names the pytest-xdist worker too: a worker's clean-up never removes another's."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
LABEL = f"conveyor.test=tests-docker-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


def run(
    *cmd: str | Path, timeout: float = 120, check: bool = True, **kw
) -> subprocess.CompletedProcess:
    """Run a command with a bound on its time; on failure show its output."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kw.pop("cwd", ROOT),
        **kw,
    )
    if check and proc.returncode != 0:
        command = " ".join(map(str, cmd))
        pytest.fail(f"{command} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def docker(
    *args: str | Path, timeout: float = 120, check: bool = True, **kw
) -> subprocess.CompletedProcess:
    return run(DOCKER, *args, timeout=timeout, check=check, **kw)


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def wait_until(probe, *, timeout: float, interval: float = 1.0, what: str = "condition") -> None:
    """Call probe() until it returns truthy, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def remove_labelled() -> None:
    for ls, rm in (
        (["ps", "-aq"], ["rm", "-f", "-v"]),
        (["volume", "ls", "-q"], ["volume", "rm", "-f"]),
        (["network", "ls", "-q"], ["network", "rm"]),
    ):
        ids = docker(*ls, "--filter", f"label={LABEL}", check=False).stdout.split()
        if ids:
            docker(*rm, *ids, check=False, timeout=60)
