"""Fixtures of the monitoring tests: the images come from scripts/build-images.sh (content-tagged,
reused while unchanged); every container and network a test starts is named uniquely and removed
at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.docker.toolchain import ROOT, read_env, run
from tests.monitoring.containers import Containers


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The monitoring images and the socket proxy, as `make images` builds them."""
    run("bash", "scripts/ensure-docker.sh", timeout=600)
    run(
        "bash",
        "scripts/build-images.sh",
        "prometheus",
        "alertmanager",
        "exporters",
        "socket-proxy",
        timeout=1800,
    )
    return read_env(ROOT / ".build" / "images.env")


@pytest.fixture(scope="session")
def airflow_image(images) -> str:
    """The Airflow image (its `airflow db migrate` gives the real metadata schema)."""
    run("bash", "scripts/build-images.sh", "airflow", timeout=1800)
    return read_env(ROOT / ".build" / "images.env")["AIRFLOW_IMAGE"]


@pytest.fixture(scope="session")
def base_images() -> dict[str, str]:
    run("bash", "scripts/base-images.sh", timeout=900)
    return read_env(ROOT / ".build" / "base-images.env")


@pytest.fixture
def containers() -> Iterator[Containers]:
    c = Containers()
    yield c
    c.close()
