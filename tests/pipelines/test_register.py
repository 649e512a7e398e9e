"""Train → evaluate → register on a real MLflow SQLite store: lineage, the promotion rule in
each metric's direction, and a champion of another schema."""

from __future__ import annotations

import json

import mlflow
import pytest
import yaml

from pipelines.common import METRICS_FILE, MODEL_DIR, PLOTS_DIR, REGISTRATION_FILE, TRAIN_RUN_FILE
from pipelines.data import data_version
from pipelines.evaluate import evaluate
from pipelines.ingest import ingest
from pipelines.register import by_alias, decide, register
from pipelines.scoring import METRICS
from pipelines.train import train
from pipelines.validate import validate
from tests.pipelines.conftest import edit, repo_params

pytestmark = pytest.mark.unit

NAME = "conveyor-test"


@pytest.mark.parametrize(
    ("metric", "candidate", "champion", "promote"),
    [
        ("roc_auc", 0.80, None, True),  # no champion yet
        ("roc_auc", 0.80, 0.79, True),  # better by the margin
        ("roc_auc", 0.80, 0.7995, False),  # better, but by less than the margin
        ("roc_auc", 0.70, 0.80, False),  # worse
        ("log_loss", 0.40, 0.45, True),  # lower is better
        ("log_loss", 0.50, 0.45, False),
        ("rmse", 51.0, 52.0, True),
        ("rmse", 52.0, 51.0, False),
        ("mae", 40.0, 40.0005, False),  # better, but by less than the margin
        ("r2", 0.45, 0.40, True),
        ("f1_macro", 0.70, 0.72, False),
    ],
)
def test_promotion_rule(metric, candidate, champion, promote):
    assert decide(metric, candidate, champion, min_improvement=0.001) is promote


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Two validated demo days and the MLflow store of this module (SQLite in the workspace)."""
    root = tmp_path_factory.mktemp("ml")
    params = edit(repo_params(rows=600), {"register.model_name": NAME})
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MODEL_NAME"):
            mp.delenv(name, raising=False)
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        mp.setenv("CONVEYOR_IMAGE", "conveyor/train:test")
        for day in ("2026-01-01", "2026-01-02"):
            params.ingest.date = day
            ingest(params, root)
            validate(params, root)
        yield root, params
        mlflow.set_tracking_uri(None)


def _weak(params):
    """The class prior, whatever the features: clearly worse than a fitted model."""
    return edit(params, {"train.estimator": "sklearn.dummy.DummyClassifier"})


def _round(root, params):
    train(params, root)
    evaluate(params, root)
    return register(params, root)


def test_train_and_evaluate_record_lineage_metrics_and_plots(workspace):
    root, params = workspace
    summary = train(params, root)
    run_id = summary["run_id"]
    mlmodel = yaml.safe_load((root / MODEL_DIR / "MLmodel").read_text())
    meta = mlmodel["metadata"]
    assert meta["data_version"] == data_version(root) and meta["data_version"].endswith(".dir")
    assert meta["image"] == "conveyor/train:test" and meta["run_id"] == run_id
    assert meta["params"]["train"]["estimator"] == "logistic_regression"
    assert (meta["task"], meta["target"], meta["classes"]) == ("classification", "churned", [0, 1])
    assert meta["features"]["numeric"] == params.schema.numeric_features
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [(c["name"], c["type"]) for c in inputs] == [
        *((c, "double") for c in params.schema.numeric_features),
        *((c, "string") for c in params.schema.categorical_features),
    ]
    assert (root / MODEL_DIR / "input_example.json").exists()
    assert (root / MODEL_DIR / "serving_input_example.json").exists()
    assert json.loads((root / TRAIN_RUN_FILE).read_text())["run_id"] == run_id

    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.tags["data_version"] == meta["data_version"]
    assert run.data.tags["git_commit"]
    assert run.data.params["train.estimator"] == "logistic_regression"

    metrics = evaluate(params, root)
    stored = json.loads((root / METRICS_FILE).read_text())
    assert set(stored) == {*METRICS["classification"], "holdout_rows"}
    assert 0.6 < stored["roc_auc"] <= 1 and metrics["holdout_rows"] == 240
    logged = mlflow.MlflowClient().get_run(run_id).data.metrics
    assert logged["holdout_roc_auc"] == stored["roc_auc"]
    (roc_file,) = (root / PLOTS_DIR / "roc").iterdir()  # binary: the positive class
    roc = json.loads(roc_file.read_text())
    assert roc_file.name == "1.json" and roc[0]["fpr"] == 0 and roc[-1]["tpr"] == 1
    assert len(json.loads((root / PLOTS_DIR / "confusion.json").read_text())) == 240
    assert json.loads((root / PLOTS_DIR / "predictions.json").read_text()) == []
    importance = json.loads((root / PLOTS_DIR / "feature_importance.json").read_text())
    assert {r["feature"] for r in importance} == set(params.schema.features)


def test_better_model_is_promoted_and_worse_never(workspace):
    root, params = workspace
    client = mlflow.MlflowClient()

    first = _round(root, _weak(params))
    assert first["decision"] == "promoted" and first["champion_score"] is None

    better = _round(root, params)
    assert better["decision"] == "promoted"
    assert better["candidate_score"] >= better["champion_score"] + 0.002
    assert better["previous_champion_version"] == first["version"]
    assert str(by_alias(client, NAME, "champion").version) == better["version"]

    worse = _round(root, _weak(params))
    assert worse["decision"] == "challenger"
    assert worse["candidate_score"] < worse["champion_score"]
    assert str(by_alias(client, NAME, "champion").version) == better["version"]
    assert str(by_alias(client, NAME, "challenger").version) == worse["version"]
    assert (
        json.loads((root / REGISTRATION_FILE).read_text())["champion_version"] == better["version"]
    )

    # Registering the same run again creates no version and changes no alias.
    again = register(_weak(params), root)
    assert again["version"] == worse["version"] and again["created"] is False
    assert len(client.search_model_versions(f"name='{NAME}'")) == 3
    assert str(by_alias(client, NAME, "champion").version) == better["version"]


@pytest.mark.parametrize("mode", ["keep", "promote"])
def test_a_champion_of_another_schema_is_named_and_the_param_decides(workspace, mode):
    root, params = workspace
    client = mlflow.MlflowClient()
    champion = by_alias(client, NAME, "champion").version
    # Fewer features: another schema, so another dataset folder, filled from the same batch.
    other = edit(
        params,
        {
            "schema.numeric_features": ["tenure_months", "monthly_charges"],
            "validation.ranges": {},
            "register.on_schema_change": mode,
        },
    )
    validate(other, root)
    result = _round(root, other)
    assert result["reason"].startswith(f"schema changed: champion v{champion} has schema ")
    assert f"register.on_schema_change={mode}" in result["reason"]
    assert "\n" not in result["reason"] and result["champion_score"] is None
    if mode == "keep":
        assert result["decision"] == "challenger"
        assert str(by_alias(client, NAME, "champion").version) == str(champion)
    else:
        assert result["decision"] == "promoted"
        assert str(by_alias(client, NAME, "champion").version) == result["version"]
