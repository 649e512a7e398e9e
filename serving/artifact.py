"""Reading an MLflow sklearn model directory without mlflow: MLmodel, signature, input example.

The MLmodel file is YAML. Its signature is either column-based (named, typed columns: the
request records' fields) or a tensor (one unnamed numeric input of shape (-1, n): a request row is
a list of n numbers), as `mlflow.sklearn.save_model` writes for a numpy input example. Without a
signature the estimator's own `feature_names_in_` / `n_features_in_` stand in (serving.convert).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

NUMERIC_TYPES = frozenset({"double", "float", "long", "integer"})
COLUMN_TYPES = NUMERIC_TYPES | {"string", "boolean"}
TENSOR_DTYPES = frozenset({"float64", "float32", "int64", "int32", "int16", "int8", "uint8"})
# `pyfunc_predict_fn` values the compiled path computes; any other method is served by sklearn.
COMPILED_PREDICT_FNS = frozenset({"predict", "predict_proba", "predict_log_proba"})


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message is the one-line reason."""


@dataclass(frozen=True)
class Feature:
    """One named column of a column-based signature."""

    name: str
    type: str
    required: bool = True


@dataclass(frozen=True)
class Tensor:
    """The one unnamed input of a tensor signature: rows of `width` numbers."""

    dtype: str
    width: int


@dataclass(frozen=True)
class Artifact:
    """What the MLmodel file says about the model, plus where its files are."""

    model_dir: str
    mlmodel: dict[str, Any]
    features: list[Feature] | None  # column signature, or None
    tensor: Tensor | None  # tensor signature, or None (neither: no signature at all)
    model_file: str
    serialization: str
    trusted_types: list[str]
    predict_fn: str
    example: Any  # the saved input example's JSON, or None

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.mlmodel.get("metadata") or {})

    @property
    def run_id(self) -> str | None:
        return self.mlmodel.get("run_id") or self.metadata.get("run_id")

    @property
    def model_uuid(self) -> str | None:
        return self.mlmodel.get("model_uuid")


def read_artifact(model_dir: str) -> Artifact:
    mlmodel = read_mlmodel(model_dir)
    flavor = (mlmodel.get("flavors") or {}).get("sklearn")
    if not flavor:
        raise ModelLoadError("the MLmodel file has no sklearn flavor: not an MLflow sklearn model")
    model_file = os.path.join(model_dir, flavor.get("pickled_model") or "model.skops")
    if not os.path.isfile(model_file):
        raise ModelLoadError(f"model file {model_file} is missing")
    pyfunc = (mlmodel.get("flavors") or {}).get("python_function") or {}
    features, tensor = parse_signature(mlmodel)
    return Artifact(
        model_dir=model_dir,
        mlmodel=mlmodel,
        features=features,
        tensor=tensor,
        model_file=model_file,
        serialization=str(flavor.get("serialization_format") or "skops"),
        trusted_types=list(flavor.get("skops_trusted_types") or []),
        predict_fn=str(pyfunc.get("predict_fn") or "predict"),
        example=read_example(model_dir, mlmodel),
    )


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


def parse_signature(mlmodel: Mapping[str, Any]) -> tuple[list[Feature] | None, Tensor | None]:
    """(columns, None) for a column signature, (None, tensor) for a tensor one, (None, None)
    without a signature."""
    raw = (mlmodel.get("signature") or {}).get("inputs")
    if not raw:
        return None, None
    try:
        specs = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"signature inputs are not JSON: {exc}") from exc
    if not isinstance(specs, list) or not specs:
        raise ModelLoadError("signature inputs are not a list of columns or tensors")
    if any(s.get("type") == "tensor" for s in specs):
        return None, _tensor(specs)
    features = []
    for spec in specs:
        name, typ = spec.get("name"), spec.get("type")
        if not name:
            raise ModelLoadError("the signature mixes named and unnamed columns")
        if typ not in COLUMN_TYPES:
            raise ModelLoadError(f"signature column '{name}' has unsupported type {typ!r}")
        features.append(Feature(name=name, type=typ, required=bool(spec.get("required", True))))
    if len({f.name for f in features}) != len(features):
        raise ModelLoadError("the signature has duplicate column names")
    return features, None


def _tensor(specs: list[dict[str, Any]]) -> Tensor:
    if len(specs) != 1 or specs[0].get("name"):
        raise ModelLoadError("only one unnamed tensor input is supported (an sklearn 2-D array)")
    spec = specs[0].get("tensor-spec") or {}
    dtype, shape = str(spec.get("dtype")), spec.get("shape") or []
    if dtype not in TENSOR_DTYPES:
        raise ModelLoadError(f"tensor input dtype {dtype!r} is not numeric")
    if len(shape) != 2 or not isinstance(shape[1], int) or shape[1] < 1:
        raise ModelLoadError(f"tensor input shape {shape} is not (-1, n): not a 2-D sklearn input")
    return Tensor(dtype=dtype, width=shape[1])


def read_example(model_dir: str, mlmodel: Mapping[str, Any]) -> Any:
    info = mlmodel.get("saved_input_example_info") or {}
    path = os.path.join(model_dir, info.get("artifact_path") or "input_example.json")
    try:
        with open(path) as fh:
            return json.load(fh)  # MLflow writes NaN for a missing value: json reads it
    except (OSError, ValueError):
        return None


def example_rows(example: Any, names: list[str] | None) -> list[list[Any]]:
    """The input example as rows (one list of values per record), NaN as None."""
    rows: list[list[Any]] = []
    if isinstance(example, dict) and isinstance(example.get("data"), list):
        cols = example.get("columns") or names or []
        index = {c: i for i, c in enumerate(cols)}
        rows = [
            [row[index[n]] for n in names] if names and all(n in index for n in names) else row
            for row in example["data"]
            if isinstance(row, list)
        ]
    elif isinstance(example, dict) and isinstance(example.get("inputs"), list):
        rows = [r for r in example["inputs"] if isinstance(r, list)]
    elif isinstance(example, list) and names:
        rows = [[r.get(n) for n in names] for r in example if isinstance(r, dict)]
    return [[None if isinstance(v, float) and math.isnan(v) else v for v in r] for r in rows]


def fingerprint(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
