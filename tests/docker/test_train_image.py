"""The training image as `make images` builds it: immutable tag and OCI labels, non-root user
that can write a fresh workspace volume, and `dvc repro` inside the container over a mounted
copy of the workspace producing the same outputs as `dvc repro` on the host."""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.docker.toolchain import LABEL, ROOT, docker, read_env, run

pytestmark = pytest.mark.docker

# The pipeline definition and code a workspace holds (outputs are what dvc repro makes).
WORKSPACE_FILES = ["dvc.yaml", "params.yaml", "pipelines", ".dvc/config", ".dvcignore"]


def inspect(image: str) -> dict:
    return json.loads(docker("image", "inspect", image).stdout)[0]


def test_build_is_tagged_by_content_and_reused(train_image):
    name, tag = train_image.split(":")
    assert name == "conveyor/train" and len(tag) == 12
    again = run("bash", "scripts/build-images.sh", "train", timeout=300)
    assert read_env(ROOT / ".build" / "images.env")["TRAIN_IMAGE"] == train_image
    assert "up to date" in again.stderr, again.stderr


def test_image_metadata(train_image, base_images):
    config = inspect(train_image)["Config"]
    labels = config["Labels"]
    oci = "org.opencontainers.image."
    for key in ("source", "revision", "created", "title", "version", "base.name"):
        assert labels.get(oci + key), f"label {oci + key} missing"
    assert labels[oci + "version"] == train_image.split(":")[1]
    assert labels[oci + "base.name"] == base_images["PYTHON_IMAGE"]
    assert config["Healthcheck"]["Test"] == ["NONE"]  # a batch job, declared explicitly
    assert config["Cmd"] == ["dvc", "repro"] and config["WorkingDir"] == "/workspace"


def test_runs_as_non_root_and_writes_a_fresh_workspace_volume(train_image, cleanup):
    assert inspect(train_image)["Config"]["User"] == "1000:1000"
    volume = f"conveyor-test-ws-{uuid.uuid4().hex[:8]}"
    docker("volume", "create", "--label", LABEL, volume)
    out = docker(
        "run", "--rm", "--label", LABEL, "-v", f"{volume}:/workspace", train_image,
        "bash", "-c", "id -u; touch /workspace/probe && echo writable",
    )  # fmt: skip
    assert out.stdout.split() == ["1000", "writable"], out.stdout


def seed_workspace(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in WORKSPACE_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def lock_outs(workspace: Path) -> dict[str, str]:
    """path -> md5 of every stage output recorded in dvc.lock."""
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage["outs"]}


def test_dvc_repro_in_the_container_matches_the_host(train_image, cleanup, tmp_path):
    if not (ROOT / "dvc.yaml").is_file():
        pytest.fail("no dvc.yaml at the repository root")
    # No git in either copy: DVC runs with core.no_scm (the image sets it system-wide).
    host = seed_workspace(tmp_path / "host")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "AWS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    run(sys.executable, "-m", "dvc", "config", "--local", "core.no_scm", "true", cwd=host, env=env)

    container = seed_workspace(tmp_path / "container")
    os.chown(container, 1000, 1000)
    for path in container.rglob("*"):
        os.lchown(path, 1000, 1000)
    # Both at once: each is mostly one core's stage processes starting up.
    with ThreadPoolExecutor(max_workers=2) as pool:
        on_host = pool.submit(
            run, sys.executable, "-m", "dvc", "repro", cwd=host, env=env, timeout=600
        )
        in_container = pool.submit(
            docker, "run", "--rm", "--label", LABEL, "-v", f"{container}:/workspace",
            train_image, "dvc", "repro", timeout=600,
        )  # fmt: skip
        on_host.result(), in_container.result()

    host_outs, container_outs = lock_outs(host), lock_outs(container)
    assert set(host_outs) == set(container_outs)
    # Data outputs are byte-identical (dvc.lock md5s).
    for path in ("data/landing", "data/dataset"):
        assert host_outs[path] == container_outs[path], path
    # Metrics and plots (computed from the trained model's predictions) are identical.
    for path in (
        "reports/metrics.json",
        *(f"reports/plots/{p}" for p in ("roc/1.json", "confusion.json")),
    ):
        assert (host / path).read_bytes() == (container / path).read_bytes(), path
    # The model was saved by the container, under the container's user, and registered.
    model = container / "models" / "model"
    assert (model / "MLmodel").is_file() and model.stat().st_uid == 1000
    registration = json.loads((container / "reports" / "registration.json").read_text())
    expected = json.loads((host / "reports" / "registration.json").read_text())
    for key in ("decision", "candidate_score", "metric", "model_name", "version"):
        assert registration[key] == expected[key], key


def test_image_report_lists_the_training_image(train_image):
    out = run(sys.executable, "scripts/image_report.py", "--no-bases", timeout=120)
    header, _, *rows = out.stdout.splitlines()
    columns = [cell.strip() for cell in header.split("|")]
    row = next(r for r in rows if train_image in r)
    cells = dict(zip(columns, (cell.strip() for cell in row.split("|")), strict=True))
    assert cells["user"] == "1000:1000" and cells["healthcheck"] == "none (disabled)"
    assert cells["size"].endswith(" MB") and cells["above base"].endswith(" MB")
    assert f"version={train_image.split(':')[1]}" in cells["OCI labels"]
