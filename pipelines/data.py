"""The versioned dataset, the time-based split, the saved model and the holdout scores shared by
train, evaluate and register (a candidate and the champion are scored on the same holdout)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from pipelines.common import DATASET_DIR, MODEL_DIR, PipelineError, feature_columns, section

# metric name -> True when higher is better
METRICS = {"accuracy": True, "f1": True, "roc_auc": True, "log_loss": False}


def load_dataset(root: Path) -> pd.DataFrame:
    """All validated batches (data/dataset/<date>.parquet), oldest date first."""
    files = sorted((root / DATASET_DIR).glob("*.parquet"))
    if not files:
        raise PipelineError(f"dataset {DATASET_DIR} is empty: run ingest and validate first")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def load_model(root: Path):
    """The sklearn Pipeline saved by train at models/model/."""
    import mlflow.sklearn

    if not (root / MODEL_DIR / "MLmodel").exists():
        raise PipelineError(f"no model at {MODEL_DIR}: run train first")
    return mlflow.sklearn.load_model(str(root / MODEL_DIR))


def data_version(root: Path) -> str:
    """The dataset's hash as DVC computes it for the `data/dataset` output (md5 of the .dir)."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(root / DATASET_DIR), fs, "md5")
    return obj.hash_info.value


def time_split(df: pd.DataFrame, params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): the most recent `split.holdout_fraction` of rows is the holdout."""
    schema = section(params, "schema")
    frac = float((params.get("split") or {}).get("holdout_fraction", 0.2))
    if not 0 < frac < 1:
        raise PipelineError(f"split.holdout_fraction must be in (0, 1), got {frac}")
    date_col = schema.get("date_column")
    if date_col:
        if date_col not in df:
            raise PipelineError(f"date column '{date_col}' is not in the dataset")
        df = df.sort_values(date_col, kind="mergesort")
    df = df.reset_index(drop=True)
    n_holdout = max(1, round(len(df) * frac))
    if len(df) - n_holdout < 2:
        raise PipelineError(f"dataset has {len(df)} rows: too few to split")
    return df.iloc[:-n_holdout], df.iloc[-n_holdout:]


def features(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """The model's input frame: numeric columns as float, categorical as str objects (NaN kept)."""
    numeric, categorical = feature_columns(params)
    missing = [c for c in numeric + categorical if c not in df]
    if missing:
        raise PipelineError(f"feature column(s) missing from the data: {', '.join(missing)}")
    out = pd.DataFrame(index=df.index)
    for col in numeric:
        out[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in categorical:
        values = [np.nan if pd.isna(v) else str(v) for v in df[col].astype(object)]
        out[col] = pd.Series(values, index=df.index, dtype=object)
    return out


def model_input(df: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Every non-target column, the configured features normalised as in `features`: a model
    trained on another feature list (an older champion) still finds its columns by name."""
    name = section(params, "schema").get("target")
    rest = df.drop(columns=[name], errors="ignore")
    normalised = features(df, params)
    return pd.concat([rest.drop(columns=list(normalised.columns)), normalised], axis=1)


def target(df: pd.DataFrame, params: dict[str, Any]) -> pd.Series:
    name = section(params, "schema").get("target")
    if not name or name not in df:
        raise PipelineError(f"target column '{name}' is not in the dataset")
    return df[name]


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def score(model, X: pd.DataFrame, y: pd.Series) -> dict[str, float | None]:
    """accuracy, f1, roc_auc and log_loss of a fitted classifier on (X, y)."""
    classes = list(model.classes_)
    proba = model.predict_proba(X)
    pred = model.classes_[proba.argmax(axis=1)]
    y_obj = y.to_numpy()
    result: dict[str, float | None] = {"accuracy": skm.accuracy_score(y_obj, pred)}
    binary = len(classes) == 2
    if binary:
        result["f1"] = skm.f1_score(y_obj, pred, pos_label=classes[1], zero_division=0)
    else:
        result["f1"] = skm.f1_score(y_obj, pred, average="macro", zero_division=0)
    try:
        if binary:
            result["roc_auc"] = skm.roc_auc_score(y_obj == classes[1], proba[:, 1])
        else:
            result["roc_auc"] = skm.roc_auc_score(y_obj, proba, multi_class="ovr", labels=classes)
    except ValueError:  # one class only in y
        result["roc_auc"] = None
    try:
        result["log_loss"] = skm.log_loss(y_obj, proba, labels=classes)
    except ValueError:
        result["log_loss"] = None
    return {k: _finite(v) if v is not None else None for k, v in result.items()}


def improvement(metric: str, candidate: float, champion: float) -> float:
    """How much better the candidate is (positive = better), whatever the metric's direction."""
    return candidate - champion if METRICS[metric] else champion - candidate
