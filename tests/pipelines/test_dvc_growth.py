"""History kept, work bounded, in the training image as the DAG's task containers run it: after
three days on the workspace, the fourth day's run in a NEW container (nothing of the earlier
containers but the workspace) pushes only that day's objects to the DVC remote, and DVC reads
none of the earlier days' files to know what changed (its state lives on the workspace)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.docker.toolchain import LABEL, docker, remove_labelled
from tests.pipelines.conftest import repo_params

pytestmark = pytest.mark.docker

HOOK = Path(__file__).parent / "open_audit"
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
NEW_DAY = "2026-01-04"


def _writable(*dirs: Path) -> None:
    for path in dirs:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, 1000, 1000)  # the image's user


def _in_container(image: str, mounts: dict[Path, str], script: str, env: dict[str, str]) -> str:
    """A new container of the training image (its own /var/tmp, like each DAG task)."""
    args = ["run", "--rm", "--label", LABEL, "--name", f"conveyor-test-{uuid.uuid4().hex[:8]}"]
    for source, target in mounts.items():
        args += ["-v", f"{source}:{target}"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    return docker(*args, image, "bash", "-euo", "pipefail", "-c", script, timeout=600).stdout


def _remote_objects(remote: Path) -> set[str]:
    return {str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file()}


@pytest.fixture
def workspace(tmp_path):
    ws, remote, audit = tmp_path / "ws", tmp_path / "remote", tmp_path / "audit"
    _writable(ws, remote, audit)
    yield {ws: "/workspace", remote: "/remote", audit: "/audit", HOOK: "/hook:ro"}
    remove_labelled()


def test_the_next_day_pushes_only_its_objects_and_reads_no_earlier_batch(train_image, workspace):
    ws, remote, audit = list(workspace)[:3]
    env = {"DVC_REMOTE_URL": "/remote"}
    run = "python -m pipelines.workspace run --set ingest.demo.rows=300"
    history = " && ".join(f"{run} --date {day} -- dvc repro validate" for day in DAYS)
    _in_container(
        train_image, workspace, f"python -m pipelines.workspace prepare && {history} && "
        f"{run} -- dvc push", env,
    )  # fmt: skip
    pushed_before = _remote_objects(remote)

    day = f"{run} --date {NEW_DAY} --"
    _in_container(
        train_image,
        workspace,
        f"{day} dvc status > /dev/null && {day} dvc status -c --json > /audit/before.json && "
        f"{day} dvc repro validate && "
        f"{day} dvc status -c --json > /audit/pending.json && {day} dvc push && "
        f"{day} dvc status -c --json > /audit/after.json",
        {**env, "PYTHONPATH": "/hook:/app", "OPEN_AUDIT_LOG": "/audit/opens.log"},
    )
    status = {name: json.loads((audit / f"{name}.json").read_text()) for name in
              ("before", "pending", "after")}  # fmt: skip
    folder = f"data/dataset/{repo_params().schema.fingerprint()}"
    assert status["before"] == {}  # the three days were all pushed
    data = {path for path in status["pending"] if path.startswith("data/dataset")}
    assert data == {"data/dataset", f"{folder}/{NEW_DAY}.parquet"}  # the new file and the .dir
    assert set(status["pending"].values()) == {"new"}
    assert status["after"] == {}
    assert len(_remote_objects(remote) - pushed_before) == len(status["pending"])

    opened = (audit / "opens.log").read_text().splitlines()
    assert opened, "the audit hook saw no dataset file at all: it is not working"
    assert {Path(p).name for p in opened} == {f"{NEW_DAY}.parquet"}

    # The control: `dvc status` (which hashes the workspace's outputs) with a fresh DVC state,
    # what each new container had before the state moved onto the workspace, reads every
    # earlier day again: the hook would have seen it above.
    (audit / "opens.log").unlink()
    _in_container(
        train_image,
        workspace,
        f"{day} dvc status > /dev/null",
        {**env, "PYTHONPATH": "/hook:/app", "OPEN_AUDIT_LOG": "/audit/opens.log",
         "DVC_SITE_CACHE_DIR": "/tmp/fresh-state"},
    )  # fmt: skip
    reread = {Path(p).name for p in (audit / "opens.log").read_text().splitlines()}
    assert {f"{d}.parquet" for d in DAYS} <= reread
