"""Fixtures for the container toolchain tests: the engine, the base images and the project
images come from the project's own scripts (tests/conftest.py: once per session), never from
mocks. Every container, volume and network a test here creates carries LABEL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.docker.toolchain import remove_labelled


@pytest.fixture(scope="module", autouse=True)
def _labelled_removed() -> Iterator[None]:
    """Whatever a module's tests left with the label goes with the module."""
    yield
    remove_labelled()


@pytest.fixture
def cleanup(engine) -> Iterator[None]:
    """Remove this test's labelled containers, volumes and networks afterwards."""
    yield
    remove_labelled()
