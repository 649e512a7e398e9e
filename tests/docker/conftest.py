"""Fixtures for the container toolchain tests: the engine, the base images and the training
image come from the project's own scripts (idempotent and cached), never from mocks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.docker.toolchain import DOCKER, ROOT, read_env, remove_labelled, run


@pytest.fixture(scope="session")
def engine() -> str:
    """A Docker engine that answers (scripts/ensure-docker.sh installs/starts one if needed)."""
    run("bash", "scripts/ensure-docker.sh", timeout=600)
    yield DOCKER
    remove_labelled()


@pytest.fixture
def cleanup(engine) -> Iterator[None]:
    """Remove this test's labelled containers, volumes and networks afterwards."""
    yield
    remove_labelled()


@pytest.fixture(scope="session")
def base_images(engine) -> dict[str, str]:
    """Resolved base images (.build/base-images.env), stand-ins built where none can be pulled."""
    run("bash", "scripts/base-images.sh", timeout=900)
    return read_env(ROOT / ".build" / "base-images.env")


@pytest.fixture(scope="session")
def train_image(base_images) -> str:
    """The training image as `make images` builds it (reused while its inputs are unchanged)."""
    run("bash", "scripts/build-images.sh", "train", timeout=1800)
    return read_env(ROOT / ".build" / "images.env")["TRAIN_IMAGE"]
