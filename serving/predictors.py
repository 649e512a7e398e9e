"""The two inference paths, one interface: a validated batch in, predictions (or the records
that cannot be scored, with the reason) out.

- `OnnxPredictor`: onnxruntime on the graph serving.convert compiled (numpy + onnxruntime only:
  the lean image).
- `SklearnPredictor`: the estimator itself on a DataFrame (the sklearn variant's fallback).

Both apply the same two guards, so a record gets the same answer, or the same refusal, on either
path: features after preprocessing must be finite at the estimator's precision (NaN only where the
estimator takes missing values), and so must the model's output. A record's answer never depends
on the other records of its batch: a null is always a missing value (NaN), whatever the rest of
the column holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.spec import MISSING_STRING, ServingSpec

# The largest preprocessed feature magnitude an estimator is given: float32's range for tree
# models (sklearn casts to float32 and refuses what overflows), 1e150 otherwise, so that a linear
# model's sums cannot overflow in one summation order and not in another (ONNX vs numpy).
FEATURE_LIMIT = {"float32": float(np.finfo(np.float32).max), "float64": 1e150}
NUMERIC_INPUT = frozenset({"double", "float", "long", "integer", "boolean"})


@dataclass
class Batch:
    """Validated input: one sequence of values per column (column signature; a float64 array
    for a number column the fast path checked) or rows (tensor)."""

    size: int
    columns: dict[str, Any] | None = None
    rows: Any = None  # a list of rows, or one float64 array (serving.requests' fast path)


@dataclass
class Output:
    labels: list[Any] | None = None  # classification: the predicted class per record
    proba: np.ndarray | None = None  # (n, classes), float64
    values: np.ndarray | None = None  # regression: (n,) or (n, targets)
    rejected: dict[int, str] = field(default_factory=dict)  # record -> why it cannot be scored


def rejected_rows(features: np.ndarray, spec: ServingSpec) -> dict[int, str]:
    """Records whose preprocessed features the estimator cannot take."""
    magnitude = np.abs(features)
    limit = FEATURE_LIMIT[spec.estimator_dtype]  # an infinity is over it, a NaN is not
    out = magnitude > limit if spec.allow_nan else ~(magnitude <= limit)
    bad = np.flatnonzero(out.any(axis=1))
    return {int(i): "a value is out of range for this model" for i in bad}


def nonfinite_rows(result: np.ndarray) -> dict[int, str]:
    flat = result.reshape(len(result), -1)
    bad = np.flatnonzero(~np.isfinite(flat).all(axis=1))
    return {int(i): "the model's output is not finite for these values" for i in bad}


class OnnxPredictor:
    kind = "onnx"

    def __init__(self, onnx_path: str, spec: ServingSpec) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One worker process per core serves one request at a time: no thread pools to spin.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.spec = spec
        out = spec.onnx_outputs
        self.result_name = out.get("scores") or out.get("values")
        self.label_name = None if spec.label_from_proba or not out.get("label") else out["label"]
        self.outputs = [n for n in (self.result_name, out.get("features"), self.label_name) if n]
        self.inputs = [
            (c.name, graph_name, c.type in NUMERIC_INPUT)
            for c, graph_name in zip(spec.columns or [], spec.onnx_inputs, strict=False)
        ]  # skl2onnx sanitizes input names: "tenure months" is "tenure_months" in the graph
        self.classes = spec.classes

    def feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        if batch.rows is not None:
            rows = np.array(batch.rows, dtype=np.float64).reshape(batch.size, -1)
            return {self.spec.onnx_inputs[0]: rows}
        feeds = {}
        columns = batch.columns or {}
        for name, graph_name, numeric in self.inputs:
            values = columns[name]
            if numeric:
                feeds[graph_name] = np.array(values, dtype=np.float64).reshape(-1, 1)
            else:
                strings = [
                    MISSING_STRING if v is None else (v if v != MISSING_STRING else v + "?")
                    for v in values
                ]
                feeds[graph_name] = np.array(strings, dtype=object).reshape(-1, 1)
        return feeds

    def predict(self, batch: Batch) -> Output:
        results = self.session.run(self.outputs, self.feeds(batch))
        result, features = results[0], results[1]
        rejected = rejected_rows(features, self.spec)
        if rejected:
            return Output(rejected=rejected)
        result = np.asarray(result, dtype=np.float64)
        rejected = nonfinite_rows(result)
        if rejected:
            return Output(rejected=rejected)
        if self.spec.task == "regression":
            values = result.reshape(batch.size, -1)
            return Output(values=values[:, 0] if values.shape[1] == 1 else values)
        if self.label_name is not None:
            labels = results[2].reshape(-1).tolist()
        else:
            labels = [self.classes[i] for i in result.argmax(axis=1).tolist()]
        return Output(labels=labels, proba=result if self.spec.has_proba else None)


class SklearnPredictor:
    kind = "sklearn"

    def __init__(self, model: Any, spec: ServingSpec) -> None:
        import pandas as pd

        self._pd = pd
        self.model = model
        self.spec = spec
        steps = getattr(model, "steps", None)
        if steps and len(steps) > 1:
            self.preprocess, self.estimator = model[:-1], steps[-1][1]
        else:
            self.preprocess, self.estimator = None, steps[-1][1] if steps else model
        self.classes = spec.classes

    def frame(self, batch: Batch) -> Any:
        """The request as the estimator's input: NaN for every null (never None), so a record's
        answer does not depend on the rest of its batch (see the module docstring)."""
        if batch.rows is not None:
            return np.array(batch.rows, dtype=np.float64).reshape(batch.size, -1)
        data: dict[str, Any] = {}
        columns = batch.columns or {}
        for col in self.spec.columns or []:
            values = columns[col.name]
            if col.type in NUMERIC_INPUT and col.type != "boolean":
                data[col.name] = np.array(values, dtype=np.float64)
            else:
                data[col.name] = np.array(
                    [np.nan if v is None else v for v in values], dtype=object
                )
        return self._pd.DataFrame(data, columns=self.spec.input_names)

    def features(self, batch: Batch) -> tuple[Any, np.ndarray]:
        """(the estimator's input, the dense float64 features the guard checks)."""
        X = self.frame(batch)
        with np.errstate(over="ignore", invalid="ignore"):  # refused below, not warned about
            Xt = self.preprocess.transform(X) if self.preprocess is not None else X
        if hasattr(Xt, "tocsr"):  # sparse: check the stored values row by row
            csr = Xt.tocsr()
            check = np.zeros((batch.size, 1))
            data = np.asarray(csr.data, dtype=np.float64)
            rows = np.repeat(np.arange(batch.size), np.diff(csr.indptr))
            bad = ~np.isfinite(data) if not self.spec.allow_nan else np.isinf(data)
            with np.errstate(invalid="ignore"):
                bad |= np.abs(data) > FEATURE_LIMIT[self.spec.estimator_dtype]
            check[rows[bad], 0] = np.inf
            return Xt, check
        return Xt, np.asarray(Xt, dtype=np.float64).reshape(batch.size, -1)

    def predict(self, batch: Batch) -> Output:
        Xt, dense = self.features(batch)
        rejected = rejected_rows(dense, self.spec)
        if rejected:
            return Output(rejected=rejected)
        est = self.estimator
        with np.errstate(over="ignore", invalid="ignore"):
            return self._predict(est, Xt)

    def _predict(self, est: Any, Xt: Any) -> Output:
        if self.spec.task == "regression":
            values = np.asarray(est.predict(Xt), dtype=np.float64)
            return Output(values=values, rejected=nonfinite_rows(values))
        proba = np.asarray(est.predict_proba(Xt), dtype=np.float64) if self.spec.has_proba else None
        if proba is not None and (rejected := nonfinite_rows(proba)):
            return Output(rejected=rejected)
        if proba is not None and self.spec.label_from_proba:
            labels = [self.classes[i] for i in proba.argmax(axis=1).tolist()]
        else:
            labels = [_py(v) for v in est.predict(Xt)]
        return Output(labels=labels, proba=proba)

    def call(self, batch: Batch, method: str) -> Any:
        """Any other `pyfunc_predict_fn` on the whole model, as MLflow's pyfunc calls it."""
        return getattr(self.model, method)(self.frame(batch))


def _py(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
