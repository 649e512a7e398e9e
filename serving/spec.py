"""The serving spec: what the bake-time compilation (serving.convert) hands to the runtime.

Written as `serving.json` beside `model.onnx` in the compiled directory (COMPILED_DIR in a baked
image, a cache outside MODEL_DIR otherwise). It holds everything the lean runtime must know
without sklearn: the inputs (typed columns or a tensor), which may be null, the known categories
of each string column, the task and classes, the predict function, the ONNX graph's outputs, which
inference path serves and why, and the parity report. Its `fingerprint` ties it to one model file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

SPEC_FILE = "serving.json"
ONNX_FILE = "model.onnx"
SPEC_VERSION = 1
# A null string value reaches the ONNX graph as this string (ONNX string tensors have no null);
# the graph's imputer treats it as missing. A client string equal to it is remapped (never missing).
MISSING_STRING = "\x1fconveyor:missing\x1f"  # no NUL: ORT strings are C strings


@dataclass
class Column:
    name: str
    type: str  # the signature's type: double, float, long, integer, string, boolean
    required: bool = True
    nullable: bool = True  # False: the model cannot take a null here (no imputer): 422
    categories: list[str] | None = None  # known values of a categorical string column
    unknown: str = "ignore"  # "error": the encoder refuses an unknown value (422)


@dataclass
class ServingSpec:
    fingerprint: str
    task: str  # classification | regression
    classes: list[Any]
    predict_fn: str
    columns: list[Column] | None = None
    tensor_width: int | None = None
    tensor_dtype: str | None = None
    tensor_nullable: bool = False
    path: str = "sklearn"  # onnx | sklearn: the inference path that serves
    note: str = ""  # why that path
    has_proba: bool = True
    label_from_proba: bool = True  # predict == classes[argmax(predict_proba)] on the check set
    estimator_dtype: str = "float64"  # the precision the estimator itself computes in
    allow_nan: bool = False  # the estimator takes NaN features (trees with missing support)
    onnx_inputs: list[str] = field(default_factory=list)  # graph input per column (sanitized)
    onnx_outputs: dict[str, str] = field(default_factory=dict)  # label/scores/values/features
    parity: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    version: int = SPEC_VERSION

    @property
    def input_names(self) -> list[str]:
        return [c.name for c in self.columns] if self.columns else []

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, SPEC_FILE)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(asdict(self), fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str) -> ServingSpec:
        with open(os.path.join(directory, SPEC_FILE)) as fh:
            doc = json.load(fh)
        if doc.get("version") != SPEC_VERSION:
            raise ValueError(f"spec version {doc.get('version')} is not {SPEC_VERSION}")
        columns = doc.pop("columns", None)
        spec = cls(**doc)
        spec.columns = [Column(**c) for c in columns] if columns is not None else None
        return spec
