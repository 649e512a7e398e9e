"""pipelines.workspace: the DAG's task runner, on a real DVC workspace (no Docker): the repository
root plays the training image's /app."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import workspace as ws
from pipelines.common import PipelineError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _args(**kw) -> argparse.Namespace:
    base = dict(date="", source="", train_json="", min_improvement=None, set=None)
    return argparse.Namespace(**{**base, **kw})


def test_overrides_flatten_the_runs_params():
    sets = ws.overrides(
        _args(
            date="2026-01-02",
            source="s3://b/{date}.csv",
            train_json='{"estimator": "random_forest", '
            '"hyperparameters": {"random_forest": {"max_depth": 4}}}',
            min_improvement="0.5",
            set=["split.holdout_fraction=0.3"],
        )
    )
    assert sets == [
        "ingest.date=2026-01-02",
        "ingest.source=s3://b/{date}.csv",
        "train.estimator=random_forest",
        "train.hyperparameters.random_forest.max_depth=4",
        "register.min_improvement=0.5",
        "split.holdout_fraction=0.3",
    ]
    # Empty values (the DAG's defaults render as "" / "{}" / "None") override nothing.
    assert ws.overrides(_args(train_json="{}", min_improvement="None")) == []


@pytest.mark.parametrize("bad", ["[1, 2]", "{not json"])
def test_bad_train_overrides_are_one_line_errors(bad):
    with pytest.raises(PipelineError, match="--train-json"):
        ws.overrides(_args(train_json=bad))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    env = {"DVC_REMOTE_URL": str(tmp_path / "remote")}
    path = tmp_path / "ws"
    assert ws.prepare(path, ROOT, env)["remote"] == env["DVC_REMOTE_URL"]
    return path


def _run(path: Path, *args: str) -> int:
    return ws.main(["run", "--workspace", str(path), "--source-dir", str(ROOT), *args])


def test_prepare_makes_a_dvc_project_with_the_images_pipeline(workspace):
    assert (workspace / ".dvc").is_dir()
    assert (workspace / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()
    assert (workspace / "pipelines" / "ingest.py").is_file()
    config = (workspace / ".dvc" / "config").read_text()
    assert "no_scm = true" in config and "remote = storage" in config
    # Idempotent: a second prepare changes nothing.
    ws.prepare(workspace, ROOT, {"DVC_REMOTE_URL": str(workspace.parent / "remote")})
    assert (workspace / ".dvc" / "config").read_text() == config


def test_run_applies_only_this_runs_params_and_keeps_the_exit_code(workspace):
    path = "sklearn.ensemble.ExtraTreesClassifier"
    train = {"estimator": path, "hyperparameters": {path: {"n_estimators": 30}}}
    code = _run(
        workspace,
        "--date",
        "2026-02-03",
        "--train-json",
        json.dumps(train),
        "--",
        sys.executable,
        "-c",
        "import sys; sys.exit(3)",
    )
    assert code == 3
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    assert params["ingest"]["date"] == "2026-02-03"
    assert params["train"]["estimator"] == path
    assert params["train"]["hyperparameters"][path] == {"n_estimators": 30}
    # The next run starts again from the image's params: no override leaks between runs.
    assert _run(workspace, "--date", "2026-02-04", "--", "true") == 0
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    assert params["train"]["estimator"] == "logistic_regression"
    assert path not in params["train"]["hyperparameters"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.no_such_knob=1"], "train.no_such_knob: unknown key"),
        (["--train-json", '{"classifier": "random_forest"}'], "train.classifier: unknown key"),
        (["--min-improvement", "a lot"], "register.min_improvement: Input should be a valid"),
    ],
)
def test_a_bad_param_fails_in_one_line_before_the_command_runs(workspace, capsys, args, message):
    marker = workspace / "ran"
    code = _run(workspace, *args, "--", "touch", str(marker))
    assert code == 2 and not marker.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("workspace: error: params override rejected: params.yaml: ")
    assert message in err and "\n" not in err


@pytest.mark.slow  # a real `dvc repro`
def test_ingest_and_validate_through_dvc_and_emit(workspace, capsys):
    assert (
        _run(
            workspace,
            "--date",
            "2026-02-03",
            "--",
            "dvc",
            "repro",
            "--force",
            "--single-item",
            "ingest",
        )
        == 0
    )
    assert (
        _run(workspace, "--date", "2026-02-03", "--", sys.executable, "-m", "pipelines.validate")
        == 0
    )
    assert len(list((workspace / "data" / "dataset").glob("*/2026-02-03.parquet"))) == 1
    (workspace / "reports").mkdir(exist_ok=True)
    (workspace / "reports" / "x.json").write_text(json.dumps({"version": "7", "a": [1]}, indent=2))
    capsys.readouterr()
    assert _run(workspace, "--emit", "reports/x.json", "--", "true") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == '{"a": [1], "version": "7"}'
    shutil.rmtree(workspace / "reports")
    assert _run(workspace, "--emit", "reports/x.json", "--", "true") == 2
