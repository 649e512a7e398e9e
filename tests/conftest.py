"""Fixtures shared by every test folder."""

import os

import pytest


@pytest.fixture(autouse=True, scope="module")
def _environ_per_module():
    """The same for a module's fixtures (a module-scoped store that trains sets
    MLFLOW_EXPERIMENT_ID before any test's own snapshot is taken)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _environ_per_test():
    """Keep each test's changes to os.environ to itself: libraries under test write it
    (mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID), and a later test's subprocess
    would inherit a value that points into another test's store."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def test_stack():
    """The suite's own Compose stack (tests/helpers/stack.py): from nothing, on the current
    images, removed with its volumes at the end. The user's stack is never touched."""
    import subprocess

    from tests.helpers.stack import ROOT, TestStack

    subprocess.run(["make", "-s", "images"], cwd=ROOT, check=True, timeout=1800)
    stack = TestStack()
    up = stack.start_from_nothing()
    assert "every service is healthy" in up.stderr, up.stderr[-3000:]
    yield stack
    stack.remove()


def pytest_collection_modifyitems(items):
    """Tests of the Compose stacks run last (everything faster fails first), and the stack's own
    checks (tests/stack: a fresh stack, no model yet) before the DAG's (tests/e2e), which share
    the same test stack and register models."""

    def rank(item) -> int:
        path = str(item.path)
        return 1 if "/tests/stack/" in path else 2 if "/tests/e2e/" in path else 0

    items.sort(key=rank)  # stable: the collected order within each group
