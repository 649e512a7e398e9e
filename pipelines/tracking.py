"""MLflow wiring, the saved model and lineage shared by train, evaluate and register.

With no environment, MLflow tracks to a SQLite file in the project (`mlflow.db`) and stores
artifacts under `mlruns/` (both gitignored), so the pipeline works offline. Set
MLFLOW_TRACKING_URI (and optionally MLFLOW_REGISTRY_URI) to use a server instead.

Models are saved in skops format. skops refuses to load any type outside its default allow-list
unless it is trusted by name; the trusted list recorded in the MLmodel file is exactly what the
saved model holds (skops' own scan of the dumped bytes), never a blanket trust-all.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path
from typing import Any

from pipelines.common import MODEL_DIR, PipelineError

LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlruns"


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / LOCAL_DB).resolve()}"


def configure(root: Path, experiment: str | None = None) -> str | None:
    """Point the MLflow client at the store; create/select `experiment`; return its id."""
    import mlflow

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    client = mlflow.MlflowClient()
    try:
        found = client.get_experiment_by_name(experiment or "Default")
    except Exception as exc:  # unreachable server, bad URI, unreadable store
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PipelineError(f"MLflow tracking store {uri} is unusable: {detail}") from exc
    if not experiment:
        return None
    if found is not None:
        experiment_id = found.experiment_id
    else:
        local = "MLFLOW_TRACKING_URI" not in os.environ
        location = (root / LOCAL_ARTIFACTS).resolve().as_uri() if local else None
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit(root: Path) -> str:
    """HEAD of the project's git checkout, else $GIT_COMMIT (set in images), else `unknown`."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("GIT_COMMIT") or "unknown"


def container_image() -> str:
    return os.environ.get("CONVEYOR_IMAGE", "")


def pip_requirements() -> list[str]:
    """Pinned requirements of the saved model (given explicitly: inferring them is slow)."""
    names = ["mlflow-skinny", "scikit-learn", "skops", "numpy", "pandas", "scipy"]
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if name == "mlflow-skinny":
                pins.append(f"mlflow-skinny=={importlib.metadata.version('mlflow')}")
    return pins


def trusted_types(model: Any) -> list[str]:
    """The types of `model` outside skops' default allow-list, as skops reads them from the
    serialized model (e.g. `sklearn.tree._tree.Tree` for a random forest)."""
    import skops.io

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def load_model(root: Path) -> tuple[Any, dict[str, Any]]:
    """The sklearn Pipeline saved by train at models/model/, and its MLmodel metadata."""
    import mlflow.sklearn
    from mlflow.models import Model

    path = root / MODEL_DIR
    if not (path / "MLmodel").exists():
        raise PipelineError(f"no model at {MODEL_DIR}: run train first")
    return mlflow.sklearn.load_model(str(path)), dict(Model.load(str(path)).metadata or {})
