"""`dvc repro` on a temporary copy of the repository: the whole pipeline, caching, partial
re-runs and a quarantined batch that leaves the champion in place."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
COPY = (
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".dvc/",
    "pipelines/",
    "data/",
    "models/",
    "reports/",
)


def _run(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    # No deployment wiring from the caller's environment. PYTHONDONTWRITEBYTECODE is dropped
    # too: with it, every stage process recompiles sklearn, mlflow & co. (~20 s per stage).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "AWS_", "DVC_"))
        and k not in ("MODEL_NAME", "CONVEYOR_IMAGE", "PYTHONDONTWRITEBYTECODE")
    }
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _set(repo: Path, *assignments: str) -> None:
    _run(repo, "python", "-m", "pipelines.params", *(f"--set={a}" for a in assignments))


def _ran(proc: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", proc.stdout + proc.stderr)


def _champion(repo: Path) -> str:
    code = (
        "import mlflow, sys; c = mlflow.MlflowClient(tracking_uri=sys.argv[1]); "
        "print(c.get_model_version_by_alias('conveyor', 'champion').version)"
    )
    return _run(repo, "python", "-c", code, f"sqlite:///{repo / 'mlflow.db'}").stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The tracked files the pipeline needs, in a fresh git repository of their own."""
    dest = tmp_path_factory.mktemp("clone")
    tracked = subprocess.run(
        ["git", "ls-files", *COPY], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in tracked:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    assert (dest / "dvc.yaml").exists() and (dest / ".dvc" / "config").exists()
    _run(dest, "git", "init", "-q")
    _run(dest, "python", "-m", "pipelines.params", "--set", "ingest.demo.rows=800")
    _run(dest, "git", "add", "-A")
    _run(dest, "git", "commit", "-q", "-m", "copy")
    return dest


def test_repro_trains_evaluates_and_registers(repo):
    proc = _run(repo, "dvc", "repro")
    assert _ran(proc) == ["ingest", "validate", "train", "evaluate", "register"]
    assert (repo / "models" / "model" / "MLmodel").exists()
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "f1_macro", "f1_weighted", "roc_auc", "log_loss"}
    for plot in ("roc/1", "confusion", "feature_importance"):
        assert json.loads((repo / "reports" / "plots" / f"{plot}.json").read_text())
    plots = _run(repo, "dvc", "plots", "show", "--json")
    assert "failed to load" not in plots.stderr  # the other task's plots exist (empty)
    registration = json.loads((repo / "reports" / "registration.json").read_text())
    assert registration["decision"] == "promoted" and registration["version"] == "1"
    git_head = _run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    assert registration["git_commit"] == git_head
    lock = (repo / "dvc.lock").read_text()
    assert registration["data_version"] in lock  # the hash DVC recorded for data/dataset
    shown = json.loads(_run(repo, "dvc", "metrics", "show", "--json").stdout)
    assert "roc_auc" in json.dumps(shown)
    _run(repo, "dvc", "push")
    assert any((repo / ".dvc-remote").rglob("*"))


def test_second_repro_runs_nothing(repo):
    proc = _run(repo, "dvc", "repro")
    assert _ran(proc) == []
    assert "up to date" in _run(repo, "dvc", "status").stdout


def test_training_param_change_reruns_train_and_what_follows(repo):
    _set(repo, "train.hyperparameters.logistic_regression.C=0.3")
    status = _run(repo, "dvc", "status").stdout
    assert re.findall(r"^(\w+):", status, flags=re.M) == ["train"]
    proc = _run(repo, "dvc", "repro")
    assert _ran(proc) == ["train", "evaluate", "register"]
    registration = json.loads((repo / "reports" / "registration.json").read_text())
    assert registration["version"] == "2"
    assert registration["decision"] in ("promoted", "challenger")


def test_bad_batch_is_quarantined_and_the_champion_kept(repo):
    champion = _champion(repo)
    registration = (repo / "reports" / "registration.json").read_bytes()
    model = (repo / "models" / "model" / "MLmodel").read_bytes()
    incoming = repo / "incoming"
    incoming.mkdir()
    (incoming / "2026-01-02.csv").write_text(
        "customer_id,event_time,tenure_months\nA,2026-01-02T10:00:00,3\n"
    )
    _set(repo, "ingest.date=2026-01-02", f"ingest.source={incoming}/{{date}}.csv")

    proc = _run(repo, "dvc", "repro", check=False)
    assert proc.returncode != 0
    assert _ran(proc) == ["ingest", "validate"]
    assert "target column 'churned' missing" in proc.stderr + proc.stdout

    quarantine = repo / "data" / "quarantine" / "2026-01-02"
    report = json.loads((quarantine / "report.json").read_text())
    assert {"column": "churned", "check": "column_in_dataframe"}.items() <= next(
        f for f in report["failures"] if f["column"] == "churned"
    ).items()
    assert (quarantine / "batch.parquet").exists()
    assert [p.name for p in (repo / "data" / "dataset").glob("*/*.parquet")] == [
        "2026-01-01.parquet"
    ]
    assert _champion(repo) == champion
    assert (repo / "reports" / "registration.json").read_bytes() == registration
    assert (repo / "models" / "model" / "MLmodel").read_bytes() == model

    # The stage's own exit code, as the DAG sees it when it runs validate directly.
    _run(repo, "python", "-m", "pipelines.ingest")
    assert _run(repo, "python", "-m", "pipelines.validate", check=False).returncode == 3
