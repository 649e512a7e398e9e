"""Stage `evaluate`: score models/model/ on the time-based holdout.

Writes DVC metrics and plots data, and logs the same metrics (`holdout_<name>`) and plot files to
the training run in MLflow:

    reports/metrics.json                   accuracy, f1, roc_auc, log_loss (+ row counts)
    reports/plots/roc.json                 ROC curve of the positive class (fpr, tpr, threshold)
    reports/plots/confusion.json           one {actual, predicted} record per holdout row
    reports/plots/feature_importance.json  permutation importance of each input column
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.inspection import permutation_importance
from sklearn.metrics import roc_curve

from pipelines import tracking
from pipelines.common import (
    METRICS_FILE,
    PLOTS_DIR,
    TRAIN_RUN_FILE,
    atomic_write_json,
    run_cli,
    section,
)
from pipelines.data import features, load_dataset, load_model, score, target, time_split

IMPORTANCE_MAX_ROWS = 2000


def plot_data(model, X, y, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The data of the three DVC plots."""
    classes = list(model.classes_)
    proba = model.predict_proba(X)
    pred = model.classes_[proba.argmax(axis=1)]
    y_arr = y.to_numpy()

    roc: list[dict[str, Any]] = []
    if len(classes) == 2 and len(set(y_arr)) == 2:
        fpr, tpr, thr = roc_curve(y_arr == classes[1], proba[:, 1])
        roc = [{"fpr": round(float(a), 6), "tpr": round(float(b), 6),
                "threshold": round(float(min(c, 1.0)), 6)}
               for a, b, c in zip(fpr, tpr, thr, strict=True)]

    confusion = [{"actual": str(a), "predicted": str(p)} for a, p in zip(y_arr, pred, strict=True)]

    sample = np.random.default_rng(seed).permutation(len(X))[:IMPORTANCE_MAX_ROWS]
    scoring = "roc_auc" if len(classes) == 2 and len(set(y_arr)) == 2 else "accuracy"
    result = permutation_importance(model, X.iloc[sample], y.iloc[sample], scoring=scoring,
                                    n_repeats=3, random_state=seed, n_jobs=1)
    importance = sorted(
        ({"feature": str(col), "importance": round(float(val), 6)}
         for col, val in zip(X.columns, result.importances_mean, strict=True)),
        key=lambda r: r["importance"], reverse=True,
    )
    return {"roc": roc, "confusion": confusion, "feature_importance": importance}


def evaluate(params: dict[str, Any], root: Path) -> dict[str, Any]:
    model = load_model(root)
    _, holdout = time_split(load_dataset(root), params)
    X, y = features(holdout, params), target(holdout, params)
    metrics = {**score(model, X, y), "holdout_rows": len(holdout)}
    seed = int(section(params, "train").get("random_state") or 0)
    plots = plot_data(model, X, y, seed=seed)

    for name, rows in plots.items():
        atomic_write_json(root / PLOTS_DIR / f"{name}.json", rows)
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
        for name in plots:
            client.log_artifact(run_id, str(root / PLOTS_DIR / f"{name}.json"), "plots")
    return {"stage": "evaluate", "run_id": run_id, **metrics}


def main(argv: list[str] | None = None) -> int:
    return run_cli("evaluate", evaluate, argv, doc=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
