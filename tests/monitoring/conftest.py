"""Fixtures of the monitoring tests: the images as `make images` builds them (tests/conftest.py,
once per session); every container and network a test starts is named uniquely and removed at
the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.monitoring.containers import Containers


@pytest.fixture(scope="session")
def images(project_images) -> dict[str, str]:
    """The monitoring images, the socket proxy and the rest (.build/images.env)."""
    return project_images


@pytest.fixture(scope="session")
def airflow_image(project_images) -> str:
    """The Airflow image (its `airflow db migrate` gives the real metadata schema)."""
    return project_images["AIRFLOW_IMAGE"]


@pytest.fixture
def containers() -> Iterator[Containers]:
    c = Containers()
    yield c
    c.close()
