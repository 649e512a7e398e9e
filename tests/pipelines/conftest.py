"""Fixtures of the ML pipeline tests: a throw-away workspace with the repo's params.yaml."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ml_env(monkeypatch):
    """No deployment wiring leaks in: MLflow goes to the workspace's SQLite file, fast failure."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MODEL_NAME", "CONVEYOR_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.fixture
def ml_params() -> dict:
    """The repo's params.yaml with a small demo batch."""
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["ingest"]["demo"]["rows"] = 600
    return params


@pytest.fixture
def ml_root(tmp_path, ml_params, ml_env) -> Path:
    """A workspace directory holding params.yaml (the project root the stages write under)."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(ml_params, sort_keys=False))
    return tmp_path
