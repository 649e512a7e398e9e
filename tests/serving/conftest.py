"""Fixture models per the artifact contract, one per family and task, built once per session.

Each is an MLflow sklearn model directory: Pipeline([("preprocess", ColumnTransformer(numeric
impute+scale, categorical impute+one-hot)), ("estimator", ...)]) over a DataFrame whose column
names have spaces and parentheses, saved with signature, input example, lineage metadata (`task`,
`classes`) and `skops_trusted_types` = exactly the file's untrusted types. Plus models saved the
plain way (`mlflow.sklearn.save_model(model, path, input_example=X)`: a tensor signature, one
with `pyfunc_predict_fn="predict_proba"`) and one that skl2onnx cannot convert.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

NUMERIC = ["tenure months", "monthly_charges (usd)", "support_calls"]
CATEGORICAL = ["contract", "region"]
FEATURES = NUMERIC + CATEGORICAL

# name -> (estimator import path, kwargs, target kind)
FAMILIES: dict[str, tuple[str, dict[str, Any], str]] = {
    "lr": ("sklearn.linear_model.LogisticRegression", {"max_iter": 1000}, "binary"),
    "rf": (
        "sklearn.ensemble.RandomForestClassifier",
        {"n_estimators": 20, "max_depth": 6, "random_state": 0},
        "multiclass",
    ),
    "hgb": ("sklearn.ensemble.HistGradientBoostingClassifier", {"max_iter": 30}, "binary"),
    "extra_trees": (
        "sklearn.ensemble.ExtraTreesClassifier",
        {"n_estimators": 15, "random_state": 0},
        "multiclass",
    ),
    "hgb_regressor": ("sklearn.ensemble.HistGradientBoostingRegressor", {"max_iter": 30}, "reg"),
    "rf_regressor": (
        "sklearn.ensemble.RandomForestRegressor",
        {"n_estimators": 15, "max_depth": 6, "random_state": 0},
        "reg",
    ),
    "ridge": ("sklearn.linear_model.Ridge", {}, "reg"),
}


def synthetic_frame(n: int = 400, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "tenure months": rng.uniform(0, 72, n),
            "monthly_charges (usd)": rng.normal(70, 20, n),
            "support_calls": rng.integers(0, 10, n),
            "contract": rng.choice(["monthly", "annual", "two_year"], n),
            "region": rng.choice(["north", "south", "east", "west"], n),
        }
    )
    logit = (
        0.04 * (30 - df["tenure months"])
        + 0.3 * df["support_calls"]
        - 1.0
        + np.where(df["contract"] == "monthly", 1.0, -0.5)
    )
    churn = rng.uniform(size=n) < 1 / (1 + np.exp(-logit))
    targets = {
        "binary": np.where(churn, "churn", "stay"),
        "multiclass": np.where(df["region"] == "north", "maybe", np.where(churn, "churn", "stay")),
        "reg": df["monthly_charges (usd)"] * 2 + df["support_calls"] + rng.normal(0, 1, n),
    }
    df.loc[::37, "monthly_charges (usd)"] = np.nan  # a few missing values, as real batches have
    df.loc[::41, "contract"] = np.nan
    return df, targets


def build_pipeline(estimator_path: str, kwargs: dict[str, Any]):
    import importlib

    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    module, _, cls = estimator_path.rpartition(".")
    estimator = getattr(importlib.import_module(module), cls)(**kwargs)
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("onehot", OneHotEncoder(handle_unknown="ignore")),
        ]
    )
    pre = ColumnTransformer(
        [("numeric", numeric, NUMERIC), ("categorical", categorical, CATEGORICAL)]
    )
    return Pipeline([("preprocess", pre), ("estimator", estimator)])


def save(model: Any, path: Path, X: Any, **kwargs: Any) -> None:
    """mlflow.sklearn.save_model, trusting exactly the file's own untrusted types."""
    import tempfile

    import mlflow.sklearn
    import skops.io

    with tempfile.TemporaryDirectory() as tmp:
        probe = f"{tmp}/model.skops"
        skops.io.dump(model, probe)
        trusted = skops.io.get_untrusted_types(file=probe) or None
    kwargs.setdefault("pip_requirements", [])  # no environment inference: seconds per model
    mlflow.sklearn.save_model(
        model, str(path), input_example=X[:3], skops_trusted_types=trusted, **kwargs
    )


def save_family(path: Path, family: str) -> Any:
    from mlflow.models import infer_signature

    estimator_path, kwargs, kind = FAMILIES[family]
    df, targets = synthetic_frame()
    model = build_pipeline(estimator_path, kwargs).fit(df, targets[kind])
    task = "regression" if kind == "reg" else "classification"
    meta = {"task": task, "target": "y", "data_version": "d41d8cd9", "git_commit": "0123abcd"}
    meta["model_version"] = "7"
    if task == "classification":
        meta["classes"] = [str(c) for c in model.classes_]
    signature = infer_signature(df, model.predict(df))
    save(model, path, df, signature=signature, metadata=meta)
    return model


def save_tensor(path: Path, predict_fn: str = "predict_proba") -> Any:
    """As most existing MLflow sklearn models are: numpy in, tensor signature, no pipeline."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    save(model, path, X, pyfunc_predict_fn=predict_fn)
    return model


def save_tensor_forest(path: Path) -> Any:
    """A forest on a bare array (no imputer): sklearn's trees take NaN themselves."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import RandomForestRegressor

    X, y = load_diabetes(return_X_y=True)
    model = RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0).fit(X, y)
    save(model, path, X)
    return model


def save_unconvertible(path: Path) -> Any:
    """A FunctionTransformer of a numpy function: skl2onnx converts only the identity one, so
    this model is served by sklearn."""
    from mlflow.models import infer_signature
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    df, targets = synthetic_frame()
    inner = build_pipeline("sklearn.linear_model.LogisticRegression", {"max_iter": 1000})
    model = Pipeline(
        [("pre", inner.steps[0][1]), ("abs", FunctionTransformer(np.abs)), ("est", inner[-1])]
    ).fit(df, targets["binary"])
    save(model, path, df, signature=infer_signature(df, model.predict(df)))
    return model


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


class FamilyDirs(dict):
    """family -> its model directory, saved on first use: a worker whose modules serve only
    `lr` (most do, through `model_dir`) does not fit the six others."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, family: str) -> Path:
        if family not in FAMILIES:
            raise KeyError(family)
        path = self.root / family
        save_family(path, family)
        self[family] = path
        return path


@pytest.fixture(scope="session")
def family_dirs(models_root) -> dict[str, Path]:
    return FamilyDirs(models_root)


@pytest.fixture(scope="session")
def model_dir(family_dirs) -> Path:
    return family_dirs["lr"]


@pytest.fixture(scope="session")
def tensor_dir(models_root) -> Path:
    path = models_root / "tensor"
    save_tensor(path)
    return path


@pytest.fixture(scope="session")
def tensor_forest_dir(models_root) -> Path:
    path = models_root / "tensor_forest"
    save_tensor_forest(path)
    return path


@pytest.fixture(scope="session")
def unconvertible_dir(models_root) -> Path:
    path = models_root / "unconvertible"
    save_unconvertible(path)
    return path


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """Compile a model dir once per session: {model_dir: compiled dir}."""
    from serving.convert import compile_model

    root = tmp_path_factory.mktemp("compiled")
    done: dict[Path, Path] = {}

    def get(model_dir: Path) -> Path:
        if model_dir not in done:
            out = root / model_dir.name
            compile_model(str(model_dir), str(out))
            done[model_dir] = out
        return done[model_dir]

    return get


@pytest.fixture(scope="session")
def load(compiled):
    """A LoadedModel from a model dir and its session compilation."""
    from serving.model import load_model

    def get(model_dir: Path, **kw: Any):
        return load_model(str(model_dir), name="churn", compiled_dir=str(compiled(model_dir)), **kw)

    return get


def load_reference(path: Path):
    from serving.artifact import read_artifact
    from serving.convert import load_estimator

    return load_estimator(read_artifact(str(path)))


def record(**overrides: Any) -> dict[str, Any]:
    base = {
        "tenure months": 12.5,
        "monthly_charges (usd)": 80.0,
        "support_calls": 3,
        "contract": "monthly",
        "region": "north",
    }
    base.update(overrides)
    return base


def frame(records: list[dict[str, Any]]):
    """Records as sklearn's input, nulls as NaN (the server's policy for every batch)."""
    import pandas as pd

    df = pd.DataFrame(records, columns=FEATURES)
    for col in NUMERIC:
        df[col] = df[col].astype(float)
    for col in CATEGORICAL:
        df[col] = df[col].astype(object).where(df[col].notna(), np.nan)
    return df
