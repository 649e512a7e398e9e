"""`dvc repro` on a temporary copy of the repository: the whole pipeline, caching, partial
re-runs and a quarantined batch that leaves the champion in place."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.pipelines.dvc_repo import commit, copy_repo, run, set_params, stages_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # real `dvc repro` runs


def _champion(repo: Path) -> str:
    code = (
        "import mlflow, sys; c = mlflow.MlflowClient(tracking_uri=sys.argv[1]); "
        "print(c.get_model_version_by_alias('conveyor', 'champion').version)"
    )
    return run(repo, "python", "-c", code, f"sqlite:///{repo / 'mlflow.db'}").stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dest = copy_repo(tmp_path_factory.mktemp("clone"))
    set_params(dest, "ingest.demo.rows=800")
    commit(dest)
    return dest


def test_repro_trains_evaluates_and_registers(repo):
    proc = run(repo, "dvc", "repro")
    assert stages_run(proc) == ["ingest", "validate", "train", "evaluate", "register"]
    assert (repo / "models" / "model" / "MLmodel").exists()
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "f1_macro", "f1_weighted", "roc_auc", "log_loss"}
    for plot in ("roc/1", "confusion", "feature_importance"):
        assert json.loads((repo / "reports" / "plots" / f"{plot}.json").read_text())
    plots = run(repo, "dvc", "plots", "show", "--json")
    assert "failed to load" not in plots.stderr  # the other task's plots exist (empty)
    registration = json.loads((repo / "reports" / "registration.json").read_text())
    assert registration["decision"] == "promoted" and registration["version"] == "1"
    git_head = run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    assert registration["git_commit"] == git_head
    lock = (repo / "dvc.lock").read_text()
    assert registration["data_version"] in lock  # the hash DVC recorded for data/dataset
    shown = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout)
    assert "roc_auc" in json.dumps(shown)
    run(repo, "dvc", "push")
    assert any((repo / ".dvc-remote").rglob("*"))


def test_second_repro_runs_nothing(repo):
    proc = run(repo, "dvc", "repro")
    assert stages_run(proc) == []
    assert "up to date" in run(repo, "dvc", "status").stdout


def test_training_param_change_reruns_train_and_what_follows(repo):
    set_params(repo, "train.hyperparameters.logistic_regression.C=0.3")
    status = run(repo, "dvc", "status").stdout
    assert re.findall(r"^(\w+):", status, flags=re.M) == ["train"]
    proc = run(repo, "dvc", "repro")
    assert stages_run(proc) == ["train", "evaluate", "register"]
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
    set_params(repo, "ingest.date=2026-01-02", f"ingest.source={incoming}/{{date}}.csv")

    proc = run(repo, "dvc", "repro", check=False)
    assert proc.returncode != 0
    assert stages_run(proc) == ["ingest", "validate"]
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
    run(repo, "python", "-m", "pipelines.ingest")
    assert run(repo, "python", "-m", "pipelines.validate", check=False).returncode == 3
