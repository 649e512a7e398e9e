"""Stage `train`: fit the sklearn Pipeline of `train.estimator` on the training side of the split.

The task (`schema.task`, else inferred from the target: the run's log says how) picks the
estimator class and the split (pipelines/data.py); pipelines/estimators.py builds the Pipeline.
The run is logged to MLflow (params, metrics, the model with signature and input example,
lineage tags: git commit, DVC data hash, container image) and the same model is saved to
models/model/ (MLflow sklearn format, skops). The MLmodel `metadata` holds what the server and
the gate need: task, target, classes (classification, in the estimator's order), features,
the model's schema fingerprint, lineage and params. models/train_run.json hands the run on to
evaluate and register. The reference profile of the training features (pipelines/profile.py:
the bins the server counts traffic in, the drift monitor's baseline) is stored beside the
model: `reference_profile.json` in models/model/ and among the logged model's files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines import tracking
from pipelines.common import (
    MODEL_DIR,
    TRAIN_RUN_FILE,
    PipelineError,
    atomic_write_json,
    first_line,
    log,
    replace_dir,
    run_cli,
)
from pipelines.data import (
    data_version,
    encoded_width,
    features,
    model_schema,
    read_split,
    target,
)
from pipelines.estimators import build_pipeline, class_path, make_estimator
from pipelines.memory import FIT_BYTES_PER_CELL, Budget, family_factor
from pipelines.profile import log_profile, save_profile, training_profile
from pipelines.scoring import score

if TYPE_CHECKING:
    from pipelines.config import Params


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value
    return out


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value (class labels must be JSON in the metadata)."""
    return value.item() if hasattr(value, "item") else value


def check_trainable(X: pd.DataFrame, y: pd.Series, task: str) -> None:
    empty = [col for col in X.columns if X[col].isna().all()]
    if empty:
        raise PipelineError(
            f"feature(s) null in every training row: {', '.join(empty)} "
            "(fill them or remove them from schema)"
        )
    if task == "regression" and y.nunique() < 2:
        raise PipelineError(f"regression target '{y.name}' is constant ({y.iloc[0]}) in training")


def signature(X: pd.DataFrame, params: Params, predictions: Any):
    """Named input columns (numeric `double`, categorical `string`; required unless training
    saw nulls) and the prediction's type."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, DataType, Schema

    numeric = set(params.schema.numeric_features)
    inputs = Schema(
        [
            ColSpec(
                DataType.double if col in numeric else DataType.string,
                col,
                required=not bool(X[col].isna().any()),
            )
            for col in X.columns
        ]
    )
    outputs = infer_signature(X.head(len(predictions)), predictions).outputs
    return ModelSignature(inputs=inputs, outputs=outputs)


def model_metadata(
    params: Params, task: str, pipeline: Any, lineage: dict[str, str]
) -> dict[str, Any]:
    """The MLmodel `metadata`: what the server and the gate read, lineage and the params."""
    metadata: dict[str, Any] = {
        "task": task,
        "target": params.schema.target,
        "features": {
            "numeric": params.schema.numeric_features,
            "categorical": params.schema.categorical_features,
        },
        "schema_fingerprint": model_schema(params, task)["fingerprint"],
        "estimator": class_path(pipeline.named_steps["estimator"]),
        "params": params.sections("ingest", "schema", "split", "train"),
        **lineage,
    }
    if task == "classification":
        metadata["classes"] = [_plain(c) for c in pipeline.classes_]
    return metadata


def logged_params(params: Params, task: str, estimator: Any):
    """(key, value) MLflow params: ingest, split and train settings, the estimator's own."""
    settings = _flatten("", params.sections("ingest", "split", "train"), {})
    yield from ((k, v) for k, v in settings.items() if not k.startswith("train.hyperparameters."))
    yield from _flatten("estimator", estimator.get_params(deep=False), {}).items()
    yield "task", task


def window_logs(window: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    """The window in force as MLflow params (`window.first_date`, ...) and metrics (rows)."""
    texts = {f"window.{k}": v for k, v in window.items() if isinstance(v, str)}
    counts = {
        "window_rows": window["rows"],
        "window_files": window["files"],
        "history_files": window["history_files"],
        "train_rows": window["train_rows"],
        "holdout_rows": window["holdout_rows"],
    }
    return texts, counts


def train(params: Params, root: Path) -> dict[str, Any]:
    import mlflow

    budget = Budget("train")
    data = read_split(root, params, budget)
    task = data.task
    log("train", f"task: {task} ({data.how})")
    estimator = make_estimator(params, task)  # bad estimator settings fail before any fitting
    window = data.summary(params.schema.date_column)
    log(
        "train",
        f"window {window['window']}: {window['files']} of {window['history_files']} batches "
        f"({window['first_date']} to {window['last_date']}), {window['rows']} rows",
    )
    X, y = features(data.train, params), target(data.train, params, task)
    holdout_rows = len(data.holdout)
    del data  # the window's frame: only the model's input is kept for fitting
    check_trainable(X, y, task)
    name = params.train.estimator
    budget.check(
        "fit", len(X), encoded_width(X, params), family_factor(FIT_BYTES_PER_CELL, name), name
    )
    pipeline = build_pipeline(params, estimator)
    try:
        pipeline.fit(X, y)
    except (TypeError, ValueError) as exc:  # e.g. a hyperparameter value the estimator refuses
        raise PipelineError(f"{params.train.estimator} failed to fit: {first_line(exc)}") from None
    log("train", f"{class_path(estimator)} fitted on {len(X)} rows")

    lineage = {
        "data_version": data_version(root),
        "git_commit": tracking.git_commit(root),
        "image": tracking.container_image(),
    }
    metadata = model_metadata(params, task, pipeline, lineage)
    profile = training_profile(X, params)
    model_files = {  # the same model to MLflow and to models/model/
        "signature": signature(X, params, pipeline.predict(X.head(5))),
        "input_example": X.head(5),
        "metadata": metadata,
        "pip_requirements": tracking.pip_requirements(),
        "skops_trusted_types": tracking.trusted_types(pipeline),
    }
    experiment_id = tracking.configure(root, params.train.experiment)

    with mlflow.start_run(experiment_id=experiment_id) as run:
        run_id = metadata["run_id"] = run.info.run_id
        mlflow.set_tags(
            {
                **lineage,
                "conveyor.stage": "train",
                "conveyor.task": task,
                "conveyor.ingest_date": params.ingest.date.isoformat(),
            }
        )
        window_params, window_counts = window_logs(window)
        mlflow.log_params(
            {
                **{k: str(v)[:500] for k, v in logged_params(params, task, estimator)},
                **window_params,
            }
        )
        train_scores = score(pipeline, X, y, task)
        mlflow.log_metrics(
            {
                **window_counts,
                **{f"train_{k}": v for k, v in train_scores.items() if v is not None},
            }
        )
        info = mlflow.sklearn.log_model(pipeline, name="model", **model_files)
        log_profile(profile, info.model_id)

    def save(tmp: Path) -> None:
        mlflow.sklearn.save_model(pipeline, str(tmp), **model_files)
        save_profile(profile, tmp)

    replace_dir(root / MODEL_DIR, save)
    handoff = {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "model_uri": info.model_uri,
        "estimator": params.train.estimator,
        "task": task,
        "window": window,
        **lineage,
    }
    atomic_write_json(root / TRAIN_RUN_FILE, handoff)
    return {
        "stage": "train",
        "train_rows": len(X),
        "holdout_rows": holdout_rows,
        "memory": budget.summary(),
        **handoff,
    }


def main(argv: list[str] | None = None) -> int:
    return run_cli("train", train, argv, doc=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
