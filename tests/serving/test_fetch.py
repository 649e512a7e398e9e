"""Model sources at start-up, through the real entrypoint: `dvc pull` from a DVC remote and
`models:/<name>@champion` from an MLflow registry; a failed fetch leaves the server not-ready
with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serving.server import build
from serving.settings import Settings
from tests.helpers.asgi import Client

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "serving" / "docker-entrypoint.sh"
BIN = Path(sys.executable).parent
SHOW_ENV = "import os; print(os.environ.get('MODEL_DIR', ''), os.environ.get('MODEL_VERSION', ''),"
SHOW_ENV += " os.environ.get('MODEL_FETCH_ERROR', ''), sep='|')"


def entrypoint(env: dict[str, str], tmp: Path) -> tuple[str, str, str]:
    """Run the entrypoint with a command that prints what the server would get."""
    full = {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(tmp),
        "MODEL_FETCH_DIR": str(tmp / "fetched"),
        "HOME": str(tmp),
        "DVC_NO_ANALYTICS": "1",
        **env,
    }
    proc = subprocess.run(
        ["bash", str(ENTRYPOINT), "python", "-c", SHOW_ENV],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    model_dir, version, error = proc.stdout.strip().split("|")
    return model_dir, version, error


def dvc(*args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def dvc_remote(model_dir, tmp_path_factory) -> tuple[Path, str]:
    ws = tmp_path_factory.mktemp("dvc-ws")
    remote = tmp_path_factory.mktemp("dvc-remote")
    dvc("init", "--no-scm", "-q", cwd=ws)
    shutil.copytree(model_dir, ws / "model")
    dvc("add", "-q", "model", cwd=ws)
    dvc("remote", "add", "-d", "store", str(remote), cwd=ws)
    dvc("push", "-q", cwd=ws)
    md5 = yaml.safe_load((ws / "model.dvc").read_text())["outs"][0]["md5"]
    return remote, md5


def test_dvc_pull_by_hash_and_by_lock_file(dvc_remote, tmp_path):
    remote, md5 = dvc_remote
    model_dir, _, error = entrypoint(
        {"MODEL_SOURCE": "dvc", "DVC_REMOTE_URL": str(remote), "DVC_MODEL_MD5": md5}, tmp_path
    )
    assert error == "" and (Path(model_dir) / "MLmodel").is_file()
    app, state = build(Settings(model_dir=model_dir))
    assert state.ready and state.model.version == "7"

    lock = tmp_path / "dvc.lock"
    lock.write_text(
        yaml.safe_dump(
            {"schema": "2.0", "stages": {"train": {"outs": [{"path": "models/model", "md5": md5}]}}}
        )
    )
    env = {"MODEL_SOURCE": "dvc", "DVC_REMOTE_URL": str(remote), "DVC_LOCK_FILE": str(lock)}
    model_dir, _, error = entrypoint(env, tmp_path)
    assert error == "" and (Path(model_dir) / "MLmodel").is_file()


def test_failed_fetch_leaves_the_server_up_and_not_ready(dvc_remote, tmp_path):
    remote, _ = dvc_remote
    env = {"MODEL_SOURCE": "dvc", "DVC_REMOTE_URL": str(remote), "DVC_MODEL_MD5": "0" * 32 + ".dir"}
    _, _, error = entrypoint(env, tmp_path)
    assert error.startswith("`dvc pull -q model.dvc` failed")
    app, state = build(Settings(fetch_error=error))
    resp = Client(app).get("/ready")
    assert resp.status_code == 503 and "model not fetched: `dvc pull" in resp.json()["reason"]

    _, _, error = entrypoint({"MODEL_SOURCE": "dvc"}, tmp_path)
    assert error == "MODEL_SOURCE=dvc needs DVC_REMOTE_URL (e.g. s3://dvc/conveyor)"
    _, _, error = entrypoint({"MODEL_SOURCE": "s3"}, tmp_path)
    assert error == "MODEL_SOURCE='s3' must be baked, mlflow or dvc"
    env = {
        "MODEL_SOURCE": "mlflow",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    _, _, error = entrypoint(env, tmp_path)
    assert error.startswith("cannot fetch models:/conveyor@champion from http://127.0.0.1:9")


def test_mlflow_registry_champion(model_dir, tmp_path):
    db = tmp_path / "mlflow.db"
    script = f"""
import mlflow, mlflow.sklearn
from mlflow import MlflowClient
from tests.serving.conftest import load_reference
mlflow.set_tracking_uri("sqlite:///{db}")
model = load_reference(__import__("pathlib").Path("{model_dir}"))
signature = mlflow.models.Model.load("{model_dir}").signature
with mlflow.start_run():
    for _ in range(2):
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name="churn",
                                        signature=signature, skops_trusted_types=["numpy.dtype"],
                                        pip_requirements=[])  # no inference: ~10 s a model
MlflowClient().set_registered_model_alias("churn", "champion", "2")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {
        "MODEL_SOURCE": "mlflow",
        "MODEL_NAME": "churn",
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
    }
    model_dir_fetched, version, error = entrypoint(env, tmp_path)
    assert error == "" and version == "2"
    app, state = build(Settings(model_dir=model_dir_fetched, model_version=version))
    assert state.ready
    assert Client(app).get("/metadata").json()["model_version"] == "2"
