"""Train: every built-in family for both tasks, import-path estimators, the skops trusted types
of the saved model (through `pipelines.train` itself, nothing trusted by the test), and every
bad estimator setting as a one-line error with exit code 2."""

from __future__ import annotations

import datetime as dt

import mlflow
import numpy as np
import pytest
import skops.io
import yaml
from sklearn.compose import ColumnTransformer

from pipelines import demo
from pipelines.common import MODEL_DIR, PipelineError
from pipelines.data import features, target
from pipelines.estimators import BUILTINS, build_pipeline, make_estimator
from pipelines.ingest import ingest
from pipelines.train import main as train_main
from pipelines.train import train
from pipelines.validate import validate
from tests.pipelines.conftest import edit, write_params

pytestmark = pytest.mark.unit

REGRESSION = {
    "schema.task": "regression",
    "schema.target": "monthly_charges",
    "schema.numeric_features": ["tenure_months", "support_calls", "age"],
    "validation.ranges": {},
}
CASES = [(name, task) for name, by_task in BUILTINS.items() for task in by_task]


@pytest.mark.parametrize(("name", "task"), CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_every_builtin_follows_the_model_contract(ml_params, name, task):
    params = edit(
        ml_params, {"train.estimator": name, **(REGRESSION if task == "regression" else {})}
    )
    estimator = make_estimator(params, task)
    assert type(estimator) is BUILTINS[name][task]
    pipe = build_pipeline(params, estimator)
    assert list(pipe.named_steps) == ["preprocess", "estimator"]
    assert isinstance(pipe.named_steps["preprocess"], ColumnTransformer)

    batch = demo.generate(dt.date(2026, 1, 1), rows=300)
    X, y = features(batch, params), target(batch, params, task)
    pipe.fit(X, y)
    unseen = X.head(3).assign(region="atlantis")  # unknown category: ignored, not an error
    if task == "classification":
        assert pipe.predict_proba(unseen).shape == (3, 2)
        assert list(pipe.classes_) == [0, 1]
    else:
        assert np.isfinite(pipe.predict(unseen)).all()


def test_random_state_and_class_weight_reach_the_estimators_that_take_them(ml_params):
    forest = make_estimator(edit(ml_params, {"train.estimator": "random_forest"}), "classification")
    assert (forest.random_state, forest.class_weight, forest.n_estimators) == (42, "balanced", 200)
    ridge = make_estimator(
        edit(ml_params, {**REGRESSION, "train.estimator": "ridge"}), "regression"
    )
    assert ridge.alpha == 1.0 and ridge.random_state == 42  # no class_weight for a regressor
    custom = edit(
        ml_params,
        {
            "train.estimator": "sklearn.neighbors.KNeighborsClassifier",
            "train.hyperparameters": {"sklearn.neighbors.KNeighborsClassifier": {"n_neighbors": 7}},
        },
    )
    assert make_estimator(custom, "classification").n_neighbors == 7  # takes neither: fine


@pytest.fixture
def landed(ml_root, ml_params):
    """A workspace with one validated demo day."""
    ingest(ml_params, ml_root)
    validate(ml_params, ml_root)
    return ml_root


@pytest.mark.parametrize(
    ("estimator", "tree_type"),
    [
        ("random_forest", "sklearn.tree._tree.Tree"),
        (
            "hist_gradient_boosting",
            "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        ),
        ("sklearn.ensemble.ExtraTreesClassifier", "sklearn.tree._tree.Tree"),
    ],
)
def test_the_saved_model_trusts_exactly_the_types_it_holds(landed, ml_params, estimator, tree_type):
    params = edit(
        ml_params,
        {"train.estimator": estimator, "train.hyperparameters.random_forest.n_estimators": 20},
    )
    try:
        train(params, landed)
        mlmodel = yaml.safe_load((landed / MODEL_DIR / "MLmodel").read_text())
        trusted = mlmodel["flavors"]["sklearn"]["skops_trusted_types"]
        file = str(landed / MODEL_DIR / "model.skops")
        assert sorted(skops.io.get_untrusted_types(file=file)) == trusted
        assert tree_type in trusted
        # MLflow loads it with the recorded list only: nothing is trusted here.
        model = mlflow.sklearn.load_model(str(landed / MODEL_DIR))
        assert model.predict_proba(
            features(demo.generate(dt.date(2026, 1, 1), rows=5), params)
        ).shape == (5, 2)
        assert mlmodel["metadata"]["classes"] == [0, 1]
        assert mlmodel["metadata"]["task"] == "classification"
    finally:
        mlflow.set_tracking_uri(None)


def test_a_regression_model_is_saved_with_its_task_and_no_classes(landed, ml_params, capsys):
    params = edit(
        ml_params, {**REGRESSION, "schema.task": None, "train.estimator": "hist_gradient_boosting"}
    )
    validate(params, landed)  # the regression schema's own dataset folder
    try:
        summary = train(params, landed)
    finally:
        mlflow.set_tracking_uri(None)
    assert summary["task"] == "regression"
    assert (
        "train: task: regression (inferred: target 'monthly_charges' has non-integer "
        "values)" in capsys.readouterr().err
    )
    meta = yaml.safe_load((landed / MODEL_DIR / "MLmodel").read_text())["metadata"]
    assert meta["task"] == "regression" and meta["target"] == "monthly_charges"
    assert "classes" not in meta
    assert meta["estimator"].endswith("HistGradientBoostingRegressor")


BAD_SETTINGS = [
    ({"train.estimator": "xgboost"}, "train.estimator 'xgboost' is neither a built-in"),
    (
        {"train.estimator": "sklearn.ensemble.NoSuchForest"},
        "module sklearn.ensemble has no NoSuchForest",
    ),
    (
        {"train.estimator": "nosuchpackage.Model"},
        "train.estimator 'nosuchpackage.Model' does not import: ModuleNotFoundError",
    ),
    ({"train.estimator": "json.JSONDecoder"}, "is not a scikit-learn estimator class"),
    (
        {"train.estimator": "sklearn.linear_model.LinearRegression"},
        "'sklearn.linear_model.LinearRegression' is not a classification model",
    ),
    (
        {"train.estimator": "ridge"},
        "'ridge' has no classification model (the task is "
        "classification): choose logistic_regression, random_forest",
    ),
    ({"train.estimator": "sklearn.svm.SVC"}, "has no predict_proba with these hyperparameters"),
    (
        {"train.hyperparameters.logistic_regression.depth": 3},
        "train.hyperparameters.logistic_regression: depth not accepted by LogisticRegression",
    ),
    (
        {"train.hyperparameters.logistic_regression.C": -1},
        "logistic_regression failed to fit: InvalidParameterError: The 'C' parameter",
    ),
    (
        {"train.estimator": "sklearn.naive_bayes.MultinomialNB"},
        "failed to fit: ValueError: Negative values in data passed to MultinomialNB",
    ),
]


@pytest.mark.parametrize(("changes", "message"), BAD_SETTINGS, ids=[m for _, m in BAD_SETTINGS])
def test_bad_estimator_settings_are_one_line_and_keep_the_model(
    landed, ml_params, capsys, changes, message
):
    marker = landed / MODEL_DIR / "MLmodel"
    marker.parent.mkdir(parents=True)
    marker.write_text("previous model")
    write_params(landed / "params.yaml", edit(ml_params, changes))
    assert train_main(["--params", str(landed / "params.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train: error: ") and message in err[-1], err
    assert not [line for line in err if "Traceback" in line]
    assert marker.read_text() == "previous model"


def test_a_regression_task_refuses_a_classifier(ml_params):
    params = edit(ml_params, REGRESSION)
    with pytest.raises(PipelineError, match="'logistic_regression' has no regression model"):
        make_estimator(params, "regression")


def test_unreachable_tracking_server_is_a_one_line_error(ml_root, monkeypatch):
    from pipelines import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    try:
        with pytest.raises(PipelineError, match="127.0.0.1:9 is unusable") as err:
            tracking.configure(ml_root, "conveyor")
        assert "\n" not in str(err.value)
    finally:
        mlflow.set_tracking_uri(None)
