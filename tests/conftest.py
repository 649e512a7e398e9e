"""Fixtures shared by every test folder."""

import os

import pytest


@pytest.fixture(autouse=True)
def _environ_per_test():
    """Keep each test's changes to os.environ to itself: libraries under test write it
    (mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID), and a later test's subprocess
    would inherit a value that points into another test's store."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
