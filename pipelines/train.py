"""Stage `train`: fit the sklearn Pipeline on the data before the time-based split.

The estimator is `Pipeline([("preprocess", ColumnTransformer), ("classifier", ...)])`:
numeric columns are median-imputed and scaled, categorical ones mode-imputed and one-hot encoded
(unknown categories ignored); the classifier and its hyperparameters come from `train` in
params.yaml. The run is logged to MLflow (params, metrics, the model with signature and input
example, lineage tags: git commit, DVC data hash, container image) and the same model is saved
to models/model/ (MLflow sklearn format, lineage in the MLmodel `metadata`).
models/train_run.json hands the run id on to evaluate and register.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils._param_validation import InvalidParameterError

from pipelines import tracking
from pipelines.common import (
    MODEL_DIR,
    TRAIN_RUN_FILE,
    PipelineError,
    atomic_write_json,
    feature_columns,
    replace_dir,
    run_cli,
    section,
)
from pipelines.data import data_version, features, load_dataset, score, target, time_split

CLASSIFIERS = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
}


def build_pipeline(params: dict[str, Any]) -> Pipeline:
    """The untrained estimator described by params (raises PipelineError on bad settings)."""
    cfg = section(params, "train")
    name = cfg.get("classifier")
    if name not in CLASSIFIERS:
        raise PipelineError(
            f"unknown classifier '{name}' in train.classifier "
            f"(choose from: {', '.join(CLASSIFIERS)})"
        )
    hyper = dict((cfg.get("hyperparameters") or {}).get(name) or {})
    cls = CLASSIFIERS[name]
    if "random_state" in cls().get_params() and cfg.get("random_state") is not None:
        hyper.setdefault("random_state", int(cfg["random_state"]))
    try:
        classifier = cls(**hyper)
    except TypeError as exc:
        raise PipelineError(f"train.hyperparameters.{name}: {exc}") from exc

    numeric, categorical = feature_columns(params)
    preprocess = ColumnTransformer(
        [
            ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")),
                                  ("scale", StandardScaler())]), numeric),
            ("categorical", Pipeline([("impute", SimpleImputer(strategy="most_frequent")),
                                      ("onehot", OneHotEncoder(handle_unknown="ignore",
                                                               sparse_output=False))]),
             categorical),
        ]
    )
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value
    return out


def train(params: dict[str, Any], root: Path) -> dict[str, Any]:
    import mlflow
    from mlflow.models import infer_signature

    pipeline = build_pipeline(params)  # bad classifier settings fail before any work
    df = load_dataset(root)
    train_df, holdout_df = time_split(df, params)
    X, y = features(train_df, params), target(train_df, params)
    if y.nunique() < 2:
        raise PipelineError(f"training data has {y.nunique()} class(es): need at least 2")
    try:
        pipeline.fit(X, y)
    except InvalidParameterError as exc:
        raise PipelineError(f"train.hyperparameters: {str(exc).splitlines()[0]}") from exc

    cfg = section(params, "train")
    lineage = {
        "data_version": data_version(root),
        "git_commit": tracking.git_commit(root),
        "image": tracking.container_image(),
    }
    logged_params = {k: v for k, v in _flatten("", params, {}).items()
                     if k.split(".")[0] in ("ingest", "split", "train")
                     and not k.startswith("train.hyperparameters.")}
    logged_params.update(_flatten(f"classifier.{cfg['classifier']}",
                                  pipeline.named_steps["classifier"].get_params(), {}))
    sample = X.head(5)
    signature = infer_signature(X.head(200), pipeline.predict(X.head(200)))
    experiment_id = tracking.configure(root, cfg.get("experiment") or "conveyor")

    with mlflow.start_run(experiment_id=experiment_id) as run:
        run_id = run.info.run_id
        metadata = {**lineage, "run_id": run_id, "classifier": cfg["classifier"],
                    "params": {k: params.get(k) for k in ("ingest", "schema", "split", "train")}}
        mlflow.set_tags({**lineage, "conveyor.stage": "train",
                         "conveyor.ingest_date": str(section(params, "ingest").get("date"))})
        mlflow.log_params({k: str(v)[:500] for k, v in logged_params.items()})
        mlflow.log_metrics({"train_rows": len(train_df), "holdout_rows": len(holdout_df),
                            **{f"train_{k}": v for k, v in score(pipeline, X, y).items()
                               if v is not None}})
        info = mlflow.sklearn.log_model(
            pipeline, name="model", signature=signature, input_example=sample,
            metadata=metadata, pip_requirements=tracking.pip_requirements(),
            skops_trusted_types=tracking.SKOPS_TRUSTED_TYPES,
        )

    def save(tmp: Path) -> None:
        mlflow.sklearn.save_model(
            pipeline, str(tmp), signature=signature, input_example=sample, metadata=metadata,
            pip_requirements=tracking.pip_requirements(),
            skops_trusted_types=tracking.SKOPS_TRUSTED_TYPES,
        )

    replace_dir(root / MODEL_DIR, save)
    handoff = {"run_id": run_id, "experiment_id": experiment_id, "model_uri": info.model_uri,
               "classifier": cfg["classifier"], **lineage}
    atomic_write_json(root / TRAIN_RUN_FILE, handoff)
    return {"stage": "train", "train_rows": len(train_df), **handoff}


def main(argv: list[str] | None = None) -> int:
    return run_cli("train", train, argv, doc=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
