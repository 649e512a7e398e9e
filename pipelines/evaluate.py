"""Stage `evaluate`: score models/model/ on the holdout of the split train used.

Writes DVC metrics and plots data, and logs the same metrics (`holdout_<name>`) and plot files to
the training run in MLflow:

    reports/metrics.json                     every metric of the task (pipelines/scoring.py)
                                             and holdout_rows
    reports/plots/roc/<class>.json           classification: ROC curve (fpr, tpr, threshold) of
                                             each class against the rest (binary: the positive
                                             class)
    reports/plots/confusion.json             classification: one {actual, predicted} per row
    reports/plots/predictions.json           regression: one {actual, predicted} per row
    reports/plots/residuals.json             regression: one {predicted, residual} per row
    reports/plots/feature_importance.json    permutation importance of each input column

The plots of the other task are written empty, so that `dvc plots show` has nothing missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance
from sklearn.metrics import roc_curve

from pipelines import tracking
from pipelines.common import (
    METRICS_FILE,
    PLOTS_DIR,
    TRAIN_RUN_FILE,
    atomic_write_json,
    replace_dir,
    run_cli,
)
from pipelines.data import encoded_width, features, read_split, target
from pipelines.memory import SCORE_BYTES_PER_CELL, Budget, family_factor
from pipelines.scoring import predicted_labels, score

if TYPE_CHECKING:
    from pipelines.config import Params

IMPORTANCE_MAX_ROWS = 2000


def _r(value: float) -> float:
    return round(float(value), 6)


def roc_curves(model: Any, X: pd.DataFrame, y: pd.Series) -> dict[str, list[dict[str, Any]]]:
    """File name -> ROC curve of each class present in the holdout, against the rest."""
    classes = list(model.classes_)
    proba = model.predict_proba(X)
    truth = y.to_numpy()
    shown = [(1, classes[1])] if len(classes) == 2 else list(enumerate(classes))
    curves: dict[str, list[dict[str, Any]]] = {}
    for i, cls in shown:
        positive = truth == cls
        if not 0 < positive.sum() < len(truth):
            continue  # a class absent from the holdout (or all of it) has no curve
        fpr, tpr, thr = roc_curve(positive, proba[:, i])
        stem = re.sub(r"[^\w.-]+", "_", str(cls)) or "class"
        while stem in curves:
            stem += "_"
        curves[stem] = [
            {"class": str(cls), "fpr": _r(a), "tpr": _r(b), "threshold": _r(min(c, 1.0))}
            for a, b, c in zip(fpr, tpr, thr, strict=True)
        ]
    return curves


def importance(model: Any, X: pd.DataFrame, y: pd.Series, scoring: str, seed: int) -> list:
    sample = np.random.default_rng(seed).permutation(len(X))[:IMPORTANCE_MAX_ROWS]
    result = permutation_importance(
        model,
        X.iloc[sample],
        y.iloc[sample],
        scoring=scoring,
        n_repeats=3,
        random_state=seed,
        n_jobs=1,
    )
    return sorted(
        (
            {"feature": str(col), "importance": _r(val)}
            for col, val in zip(X.columns, result.importances_mean, strict=True)
        ),
        key=lambda r: r["importance"],
        reverse=True,
    )


def plot_data(model: Any, X: pd.DataFrame, y: pd.Series, task: str, seed: int) -> dict[str, Any]:
    """The data of the DVC plots: file name (relative to reports/plots/) -> rows."""
    if task == "regression":
        predicted = model.predict(X)
        truth = y.to_numpy()
        return {
            "roc": {},
            "confusion.json": [],
            "predictions.json": [
                {"actual": _r(a), "predicted": _r(p)} for a, p in zip(truth, predicted, strict=True)
            ],
            "residuals.json": [
                {"predicted": _r(p), "residual": _r(a - p)}
                for a, p in zip(truth, predicted, strict=True)
            ],
            "feature_importance.json": importance(model, X, y, "r2", seed),
        }
    pred = predicted_labels(model, model.predict_proba(X))
    binary = len(model.classes_) == 2 and y.nunique() == 2
    return {
        "roc": roc_curves(model, X, y),
        "confusion.json": [
            {"actual": str(a), "predicted": str(p)} for a, p in zip(y.to_numpy(), pred, strict=True)
        ],
        "predictions.json": [],
        "residuals.json": [],
        "feature_importance.json": importance(
            model, X, y, "roc_auc" if binary else "accuracy", seed
        ),
    }


def write_plots(root: Path, plots: dict[str, Any]) -> None:
    def build(tmp: Path) -> None:
        (tmp / "roc").mkdir()
        for stem, rows in plots["roc"].items():
            atomic_write_json(tmp / "roc" / f"{stem}.json", rows)
        for name, rows in plots.items():
            if name != "roc":
                atomic_write_json(tmp / name, rows)

    replace_dir(root / PLOTS_DIR, build)


def evaluate(params: Params, root: Path) -> dict[str, Any]:
    model, _ = tracking.load_model(root)
    budget = Budget("evaluate")
    data = read_split(root, params, budget)
    task, window = data.task, data.summary(params.schema.date_column)
    X, y = features(data.holdout, params), target(data.holdout, params, task)
    del data
    name = params.train.estimator
    budget.check(
        "score", len(X), encoded_width(X, params), family_factor(SCORE_BYTES_PER_CELL, name), name
    )
    metrics = {**score(model, X, y, task), "holdout_rows": len(X)}
    write_plots(root, plot_data(model, X, y, task, seed=params.split.random_state))
    atomic_write_json(root / METRICS_FILE, metrics)

    run_file = root / TRAIN_RUN_FILE
    run_id = json.loads(run_file.read_text())["run_id"] if run_file.exists() else None
    if run_id:
        import mlflow

        tracking.configure(root)
        client = mlflow.MlflowClient()
        for name, value in metrics.items():
            if value is not None:
                client.log_metric(run_id, f"holdout_{name}", value)
        client.log_artifacts(run_id, str(root / PLOTS_DIR), "plots")
    return {
        "stage": "evaluate",
        "task": task,
        "run_id": run_id,
        "window": window,
        "memory": budget.summary(),
        **metrics,
    }


def main(argv: list[str] | None = None) -> int:
    return run_cli("evaluate", evaluate, argv, doc=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
