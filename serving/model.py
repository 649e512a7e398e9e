"""Load an MLflow sklearn model directory for serving, without importing mlflow.

The MLmodel file is read as YAML; the estimator (skops by default) is loaded with skops.io
only when needed. A compiled numpy form of the pipeline (serving.fastpath) is used when one
exists for this exact model file and still reproduces sklearn's reference predictions;
otherwise the sklearn pipeline is loaded, compiled if its shape allows (parity-checked against
`predict_proba`), and kept as the predictor if not (e.g. tree ensembles).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from serving.fastpath import FastPathError, LinearFastPath

log = logging.getLogger("serving.model")

FASTPATH_FILE = "serving-fastpath.npz"
NUMERIC_TYPES = {"double", "float", "long", "integer"}
SUPPORTED_TYPES = NUMERIC_TYPES | {"string", "boolean"}


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message is the one-line reason."""


@dataclass(frozen=True)
class Feature:
    name: str
    type: str
    required: bool = True


@dataclass
class LoadedModel:
    name: str
    version: str
    run_id: str | None
    model_uuid: str | None
    metadata: dict[str, Any]
    features: list[Feature]
    classes: list[Any]
    predictor: Any
    predictor_kind: str
    fast_path_note: str
    source: str
    load_seconds: float = 0.0
    example: list[dict[str, Any]] = field(default_factory=list)

    def predict_indices(self, records: Sequence[Mapping[str, Any]]) -> tuple[list[int], np.ndarray]:
        """Index into `classes` of each record's predicted class, and the probabilities."""
        proba = self.predictor.predict_proba(records)
        return proba.argmax(axis=1).tolist(), proba

    def predict(self, records: Sequence[Mapping[str, Any]]) -> tuple[list[Any], np.ndarray]:
        idx, proba = self.predict_indices(records)
        return [self.classes[i] for i in idx], proba


class SklearnPredictor:
    """The estimator itself, fed a DataFrame typed like the signature (the general fallback)."""

    kind = "sklearn"

    def __init__(self, estimator: Any, features: list[Feature]) -> None:
        import pandas as pd

        self._pd = pd
        self.estimator = estimator
        self.features = features
        self.classes = [c.item() if hasattr(c, "item") else c for c in estimator.classes_]

    def frame(self, records: Sequence[Mapping[str, Any]]) -> Any:
        cols: dict[str, Any] = {}
        for f in self.features:
            values = [r[f.name] for r in records]
            if f.type in NUMERIC_TYPES:
                has_none = any(v is None for v in values)
                dtype = np.int64 if f.type in ("long", "integer") and not has_none else np.float64
                cols[f.name] = np.array(values, dtype=dtype)
            else:
                cols[f.name] = values
        return self._pd.DataFrame(cols)

    def predict_proba(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.asarray(self.estimator.predict_proba(self.frame(records)), dtype=np.float64)


def read_mlmodel(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, "MLmodel")
    if not os.path.isdir(model_dir):
        raise ModelLoadError(f"model directory {model_dir} does not exist (model not fetched?)")
    try:
        with open(path) as fh:
            doc = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise ModelLoadError(f"no MLmodel file in {model_dir}: not an MLflow model") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"unreadable {path}: {exc}".splitlines()[0]) from exc
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{path} is not a mapping")
    return doc


def parse_signature(mlmodel: Mapping[str, Any]) -> list[Feature]:
    sig = mlmodel.get("signature") or {}
    raw = sig.get("inputs")
    if not raw:
        raise ModelLoadError("the model has no input signature: cannot build a request schema")
    try:
        cols = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"signature inputs are not JSON: {exc}") from exc
    features = []
    for col in cols:
        name, typ = col.get("name"), col.get("type")
        if not name:
            raise ModelLoadError("the signature has an unnamed (tensor) input: need named columns")
        if typ not in SUPPORTED_TYPES:
            raise ModelLoadError(f"signature column '{name}' has unsupported type {typ!r}")
        features.append(Feature(name=name, type=typ, required=bool(col.get("required", True))))
    if len({f.name for f in features}) != len(features):
        raise ModelLoadError("the signature has duplicate column names")
    return features


def read_example(model_dir: str, mlmodel: Mapping[str, Any]) -> list[dict[str, Any]]:
    info = mlmodel.get("saved_input_example_info") or {}
    path = os.path.join(model_dir, info.get("artifact_path", "input_example.json"))
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return []
    if isinstance(doc, dict) and "columns" in doc and "data" in doc:
        return [dict(zip(doc["columns"], row, strict=False)) for row in doc["data"]]
    if isinstance(doc, list) and all(isinstance(r, dict) for r in doc):
        return doc
    return []


def _sklearn_flavor(model_dir: str, mlmodel: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    flavor = (mlmodel.get("flavors") or {}).get("sklearn")
    if not flavor:
        raise ModelLoadError("the MLmodel file has no sklearn flavor")
    path = os.path.join(model_dir, flavor.get("pickled_model", "model.skops"))
    if not os.path.isfile(path):
        raise ModelLoadError(f"model file {path} is missing")
    return path, flavor.get("serialization_format", "skops"), flavor.get("skops_trusted_types")


def fingerprint(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_estimator(path: str, fmt: str) -> Any:
    if fmt == "skops":
        import skops.io

        # Our own registry's model: trust exactly the types the file declares.
        return skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
    if fmt in ("pickle", "cloudpickle"):
        import pickle

        with open(path, "rb") as fh:
            return pickle.load(fh)  # noqa: S301 - our own registry's artifact
    raise ModelLoadError(f"unknown serialization format {fmt!r}")


def _cache_paths(model_dir: str, digest: str) -> list[str]:
    return [
        os.path.join(model_dir, FASTPATH_FILE),
        os.path.join(tempfile.gettempdir(), "conveyor-serving", f"{digest[:24]}.npz"),
    ]


def _save_fastpath(fast: LinearFastPath, paths: list[str], **kwargs: Any) -> str | None:
    for path in paths:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            fast.save(tmp, **kwargs)
            os.replace(tmp, path)
            return path
        except OSError:
            continue
    return None


def _compile(estimator: Any, features: list[Feature], example: list[dict[str, Any]]):
    """(fast path or None, reference records, sklearn's probabilities, note)."""
    from serving.compile import Unsupported, check_records, compile_pipeline

    sk = SklearnPredictor(estimator, features)
    try:
        fast = compile_pipeline(estimator)
    except Unsupported as exc:
        records = check_records(features, example, None)
        return None, records, sk.predict_proba(records), f"sklearn ({exc})", sk
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        records = check_records(features, example, None)
        return None, records, sk.predict_proba(records), f"sklearn (cannot compile: {exc})", sk
    records = check_records(features, example, fast)
    expected = sk.predict_proba(records)
    try:
        if fast.classes != sk.classes:
            raise FastPathError("classes differ")
        fast.verify(records, expected)
    except FastPathError as exc:
        return None, records, expected, f"sklearn (compiled path failed: {exc})", sk
    return fast, records, expected, "compiled (parity with sklearn checked)", sk


def compile_to_cache(model_dir: str) -> str:
    """Compile the model in model_dir and store the fast path next to it (image build step)."""
    mlmodel = read_mlmodel(model_dir)
    features = parse_signature(mlmodel)
    path, fmt, _ = _sklearn_flavor(model_dir, mlmodel)
    estimator = load_estimator(path, fmt)
    fast, records, expected, note, _ = _compile(
        estimator, features, read_example(model_dir, mlmodel)
    )
    if fast is None:
        raise ModelLoadError(note)
    saved = _save_fastpath(
        fast,
        _cache_paths(model_dir, fingerprint(path)),
        fingerprint=fingerprint(path),
        check_records=records,
        check_proba=expected,
    )
    if saved is None:
        raise ModelLoadError("no writable place for the compiled model")
    return saved


def load_model(
    model_dir: str, *, name: str, version: str = "", fast_path: bool = True
) -> LoadedModel:
    """Load, pick the predictor, run the warm-up prediction. Raises ModelLoadError."""
    t0 = time.perf_counter()
    mlmodel = read_mlmodel(model_dir)
    features = parse_signature(mlmodel)
    path, fmt, _ = _sklearn_flavor(model_dir, mlmodel)
    example = read_example(model_dir, mlmodel)
    digest = fingerprint(path)
    paths = _cache_paths(model_dir, digest)

    predictor: Any = None
    note = "sklearn (FAST_PATH=off)"
    if fast_path:
        for cached in paths:
            if not os.path.exists(cached):
                continue
            try:
                predictor = LinearFastPath.load(cached, digest)
                note = f"compiled ({os.path.basename(cached)}, parity re-checked at load)"
                break
            except FastPathError as exc:
                log.warning("ignoring compiled model %s: %s", cached, exc)
    if predictor is None:
        try:
            estimator = load_estimator(path, fmt)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any loader failure is a load failure
            raise ModelLoadError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
        if not hasattr(estimator, "predict_proba") or not hasattr(estimator, "classes_"):
            raise ModelLoadError("the estimator has no predict_proba/classes_: not a classifier")
        if fast_path:
            fast, records, expected, note, sk = _compile(estimator, features, example)
            predictor = fast or sk
            if fast is not None:
                _save_fastpath(
                    fast, paths, fingerprint=digest, check_records=records, check_proba=expected
                )
        else:
            predictor = SklearnPredictor(estimator, features)

    meta = dict(mlmodel.get("metadata") or {})
    model = LoadedModel(
        name=name,
        version=str(version or meta.get("model_version") or meta.get("version") or "unknown"),
        run_id=mlmodel.get("run_id") or meta.get("run_id"),
        model_uuid=mlmodel.get("model_uuid"),
        metadata=meta,
        features=features,
        classes=list(predictor.classes),
        predictor=predictor,
        predictor_kind=predictor.kind,
        fast_path_note=note,
        source=model_dir,
        example=example,
    )
    warm = example or [{f.name: _neutral(f) for f in features}]
    try:
        labels, proba = model.predict(warm)
    except Exception as exc:  # noqa: BLE001 - a model that cannot predict is not ready
        raise ModelLoadError(f"warm-up prediction failed: {type(exc).__name__}: {exc}") from exc
    if not np.all(np.isfinite(proba)):
        raise ModelLoadError("warm-up prediction returned non-finite probabilities")
    model.load_seconds = time.perf_counter() - t0
    return model


def _neutral(feature: Feature) -> Any:
    if feature.type == "string":
        return ""
    if feature.type == "boolean":
        return False
    return 0
