"""Fixtures of the ML pipeline tests: a throw-away workspace with the repo's params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.config import Params, validate

REPO = Path(__file__).resolve().parents[2]


def repo_params(**demo) -> Params:
    """The repo's params.yaml, typed, with the demo generator's settings overridden."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["ingest"]["demo"].update(demo)
    return validate(raw)


def write_params(path: Path, params: Params) -> Path:
    path.write_text(yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False))
    return path


@pytest.fixture
def ml_env(monkeypatch):
    """No deployment wiring leaks in: MLflow goes to the workspace's SQLite file, fast failure."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MODEL_NAME", "CONVEYOR_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.fixture
def ml_params() -> Params:
    """The repo's params.yaml with a small demo batch."""
    return repo_params(rows=600)


@pytest.fixture
def ml_root(tmp_path, ml_params, ml_env) -> Path:
    """A workspace directory holding params.yaml (the project root the stages write under)."""
    write_params(tmp_path / "params.yaml", ml_params)
    return tmp_path


def edit(params: Params, changes: dict[str, Any]) -> Params:
    """A copy of `params` with dotted keys set, validated as a whole (a change of the target
    and the features together is one edit, as in params.yaml)."""
    raw = params.model_dump(mode="json", by_alias=True)
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    return validate(raw)
