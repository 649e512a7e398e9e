"""Holdout metrics of a fitted model, for either task, and which direction is better.

Classification (binary or multiclass): accuracy, macro and weighted f1, one-vs-rest roc_auc
(macro mean over the classes present in the holdout), log_loss. Regression: rmse, mae, r2.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

# metric name -> True when higher is better; every metric of a task's list is computed
HIGHER_IS_BETTER = {
    "accuracy": True,
    "f1_macro": True,
    "f1_weighted": True,
    "roc_auc": True,
    "log_loss": False,
    "rmse": False,
    "mae": False,
    "r2": True,
}
METRICS = {
    "classification": ("accuracy", "f1_macro", "f1_weighted", "roc_auc", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def predicted_labels(model: Any, proba: np.ndarray) -> np.ndarray:
    """The class of highest probability (what the server answers), in the labels' own type."""
    return np.asarray(model.classes_)[proba.argmax(axis=1)]


def one_vs_rest_auc(labels: np.ndarray, proba: np.ndarray, classes: list) -> float | None:
    """Macro mean of each class's AUC against the rest, over the classes the holdout has both
    with and without: sklearn's multi_class="ovr" refuses a holdout missing any class."""
    aucs = []
    for i, cls in enumerate(classes):
        positive = labels == cls
        if 0 < positive.sum() < len(labels):
            aucs.append(skm.roc_auc_score(positive, proba[:, i]))
    return float(np.mean(aucs)) if aucs else None


def score(model: Any, X: pd.DataFrame, y: pd.Series, task: str) -> dict[str, float | None]:
    """Every metric of `task` for a fitted model on (X, y); None where undefined."""
    truth = y.to_numpy()
    if task == "regression":
        predicted = model.predict(X)
        result = {
            "rmse": skm.root_mean_squared_error(truth, predicted),
            "mae": skm.mean_absolute_error(truth, predicted),
            "r2": skm.r2_score(truth, predicted),
        }
    else:
        classes = list(model.classes_)
        proba = model.predict_proba(X)
        predicted = predicted_labels(model, proba)
        result = {
            "accuracy": skm.accuracy_score(truth, predicted),
            "f1_macro": skm.f1_score(truth, predicted, average="macro", zero_division=0),
            "f1_weighted": skm.f1_score(truth, predicted, average="weighted", zero_division=0),
            "roc_auc": one_vs_rest_auc(truth, proba, classes),
            "log_loss": skm.log_loss(truth, proba, labels=classes),
        }
    return {name: _finite(value) for name, value in result.items()}


def improvement(metric: str, candidate: float, champion: float) -> float:
    """How much better the candidate is (positive = better), whatever the metric's direction."""
    return candidate - champion if HIGHER_IS_BETTER[metric] else champion - candidate
