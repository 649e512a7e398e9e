"""Fixtures of the release tests: one engine client per module."""

import pytest


@pytest.fixture(scope="module")
def client():
    docker = pytest.importorskip("docker")
    c = docker.from_env()
    c.ping()
    yield c
    c.close()
