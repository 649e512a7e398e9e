"""Fixture models built per the artifact contract: an MLflow sklearn model directory holding
Pipeline([("preprocess", ColumnTransformer(numeric impute+scale, categorical impute+one-hot)),
("classifier", ...)]), saved with signature, input example and lineage metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

NUMERIC = ["tenure months", "monthly_charges", "support_calls"]  # a space on purpose
CATEGORICAL = ["contract", "region"]
FEATURES = NUMERIC + CATEGORICAL


def synthetic_frame(n: int = 400, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "tenure months": rng.uniform(0, 72, n),
            "monthly_charges": rng.normal(70, 20, n),
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
    y = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-logit)), "churn", "stay")
    # a few missing values, as real batches have
    df.loc[::37, "monthly_charges"] = np.nan
    return df, y


def build_pipeline(classifier: str = "logistic_regression"):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    clf: Any = (
        LogisticRegression(max_iter=1000)
        if classifier == "logistic_regression"
        else RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0)
    )
    pre = ColumnTransformer(
        [
            (
                "numeric",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                NUMERIC,
            ),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                CATEGORICAL,
            ),
        ]
    )
    return Pipeline([("preprocess", pre), ("classifier", clf)])


def save_fixture_model(path: Path, classifier: str = "logistic_regression", multiclass=False):
    import mlflow.sklearn
    from mlflow.models import infer_signature

    df, y = synthetic_frame()
    if multiclass:
        y = np.where(df["region"] == "north", "maybe", y)
    model = build_pipeline(classifier).fit(df, y)
    signature = infer_signature(df, model.predict(df))
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=signature,
        input_example=df.head(3),
        metadata={"data_version": "d41d8cd9", "git_commit": "0123abcd", "model_version": "7"},
        skops_trusted_types=["numpy.dtype", "sklearn.tree._tree.Tree"],
    )
    return model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "lr"
    save_fixture_model(path)
    return path


@pytest.fixture(scope="session")
def forest_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "rf"
    save_fixture_model(path, "random_forest", multiclass=True)
    return path


@pytest.fixture(scope="session")
def reference(model_dir):
    """The in-process sklearn model, straight from its skops file."""
    return load_reference(model_dir)


def load_reference(path: Path):
    import skops.io

    file = str(path / "model.skops")
    return skops.io.load(file, trusted=skops.io.get_untrusted_types(file=file))


def record(**overrides: Any) -> dict[str, Any]:
    base = {
        "tenure months": 12.5,
        "monthly_charges": 80.0,
        "support_calls": 3,
        "contract": "monthly",
        "region": "north",
    }
    base.update(overrides)
    return base


def frame(records: list[dict[str, Any]]):
    import pandas as pd

    df = pd.DataFrame(records, columns=FEATURES)
    df["monthly_charges"] = df["monthly_charges"].astype(float)
    return df
