"""Train: the estimator contract and bad training settings (no MLflow needed)."""

from __future__ import annotations

import datetime as dt

import pytest
from sklearn.compose import ColumnTransformer

from pipelines import demo
from pipelines.common import MODEL_DIR, PipelineError
from pipelines.data import features, target
from pipelines.train import CLASSIFIERS, build_pipeline
from pipelines.train import main as train_main

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_every_classifier_follows_the_model_contract(ml_params, name):
    ml_params["train"]["classifier"] = name
    pipe = build_pipeline(ml_params)
    assert list(pipe.named_steps) == ["preprocess", "classifier"]
    assert isinstance(pipe.named_steps["preprocess"], ColumnTransformer)
    assert isinstance(pipe.named_steps["classifier"], CLASSIFIERS[name])

    batch = demo.generate(dt.date(2026, 1, 1), rows=300)
    X, y = features(batch, ml_params), target(batch, ml_params)
    pipe.fit(X, y)
    unseen = X.head(3).assign(region="atlantis")  # unknown category: ignored, not an error
    assert pipe.predict_proba(unseen).shape == (3, 2)
    assert list(pipe.classes_) == [0, 1]


def test_unknown_classifier_is_named_and_nothing_is_touched(ml_root, ml_params, capsys):
    import yaml

    ml_params["train"]["classifier"] = "xgboost"
    with pytest.raises(PipelineError, match="unknown classifier 'xgboost'"):
        build_pipeline(ml_params)
    marker = ml_root / MODEL_DIR / "MLmodel"
    marker.parent.mkdir(parents=True)
    marker.write_text("previous model")
    (ml_root / "params.yaml").write_text(yaml.safe_dump(ml_params))
    assert train_main(["--params", str(ml_root / "params.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "xgboost" in err
    assert marker.read_text() == "previous model"


def test_unknown_hyperparameter_is_bad_input(ml_params):
    ml_params["train"]["hyperparameters"]["logistic_regression"]["depth"] = 3
    with pytest.raises(PipelineError, match="train.hyperparameters.logistic_regression"):
        build_pipeline(ml_params)


def test_unreachable_tracking_server_is_a_one_line_error(ml_root, monkeypatch):
    import mlflow

    from pipelines import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    try:
        with pytest.raises(PipelineError, match="127.0.0.1:9 is unusable") as err:
            tracking.configure(ml_root, "conveyor")
        assert "\n" not in str(err.value)
    finally:
        mlflow.set_tracking_uri(None)
