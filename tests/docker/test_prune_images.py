"""scripts/prune-images.sh keeps the engine's disk bounded without breaking anything: per
image the current tag and the one before it stay, older tags go, and an image a container
still uses is never removed."""

from __future__ import annotations

import os

import pytest

from tests.docker.toolchain import DOCKER, LABEL, docker, remove_labelled, run

pytestmark = pytest.mark.docker

REPOSITORY = "conveyor-test/prune-probe"


def _build(tag: str) -> str:
    ref = f"{REPOSITORY}:{tag}"
    dockerfile = f"FROM scratch\nLABEL {LABEL} probe={tag}\n"
    run(DOCKER, "build", "-q", "-t", ref, "-", input=dockerfile, timeout=120)
    return ref


def _tags() -> set[str]:
    out = docker("images", REPOSITORY, "--format", "{{.Tag}}").stdout
    return set(out.split())


def test_older_tags_go_the_previous_and_used_ones_stay(engine, tmp_path):
    # Oldest first: `used` (a container holds it), `stale`, `previous`, `current`.
    for tag in ("used", "stale", "previous", "current"):
        _build(tag)
    docker("create", "--label", LABEL, f"{REPOSITORY}:used", "/nothing")
    images_env = tmp_path / "images.env"
    images_env.write_text(f"PROBE_IMAGE={REPOSITORY}:current\n")
    try:
        out = run(
            "bash", "scripts/prune-images.sh", env={**os.environ, "IMAGES_ENV": str(images_env)}
        )
        assert _tags() == {"used", "previous", "current"}, out.stderr
        assert f"removed {REPOSITORY}:stale" in out.stderr
        # Nothing left to remove: a second run keeps all three.
        run("bash", "scripts/prune-images.sh", env={**os.environ, "IMAGES_ENV": str(images_env)})
        assert _tags() == {"used", "previous", "current"}
    finally:
        remove_labelled()
        for tag in _tags():
            docker("rmi", "-f", f"{REPOSITORY}:{tag}", check=False)


def test_refuses_to_go_on_when_the_disk_is_nearly_full(engine, tmp_path):
    images_env = tmp_path / "images.env"
    images_env.write_text("")
    out = run(
        "bash",
        "scripts/prune-images.sh",
        env={**os.environ, "IMAGES_ENV": str(images_env), "MIN_FREE_GIB": "100000"},
        check=False,
    )
    assert out.returncode == 1
    assert "GiB free under" in out.stderr and "MIN_FREE_GIB" in out.stderr, out.stderr
