"""Compile an MLflow sklearn model to ONNX, check it against sklearn, write the serving spec.

    python -m serving.convert MODEL_DIR OUT_DIR [--no-onnx]

Runs where sklearn is (the sklearn serving variant: at bake time in serving/model.Dockerfile's
convert stage, or once at start-up for a model fetched from the registry or DVC). Writes
OUT_DIR/serving.json (serving.spec) and, when the compiled path matches sklearn,
OUT_DIR/model.onnx; prints the spec's summary as one JSON line. A model that cannot be converted,
or whose conversion fails the parity check, is still served: by sklearn (`path: sklearn`, with
the reason in `note`). Exit 2 only when the model itself cannot be loaded.

The graph (skl2onnx converters, onnxruntime at run time) is a hybrid that reproduces sklearn's
own arithmetic (field notes, "ONNX for scikit-learn pipelines"):
- preprocessing in float64 (numeric inputs as double tensors, strings as string tensors), with a
  SimpleImputer converter of our own built from standard ops (IsNaN/Equal + Where): ORT has no
  double Imputer and skl2onnx's refuses string columns with a NaN missing value;
- then a Cast to the estimator's precision: float32 for sklearn.tree's models and forests
  (sklearn itself casts X to float32 for them, and skl2onnx adjusts the thresholds to that),
  float64 otherwise (linear models: float32 would overflow 1e300 into NaN probabilities;
  HistGradientBoosting: float64 thresholds, written as doubles into the tree op);
- the preprocessed features are a second graph output: the runtime refuses a record whose
  features are not finite at the estimator's precision, exactly as on the sklearn path.

Parity: on seeded random records (every column null in some records, one all-null record, unknown
categories, extreme finite values, the input example), scored one by one and as one batch, the
compiled graph must give the same refusals, labels and probabilities/values within TOLERANCE.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from dataclasses import asdict
from typing import Any

import numpy as np

from serving.artifact import (
    COMPILED_PREDICT_FNS,
    Artifact,
    ModelLoadError,
    example_rows,
    fingerprint,
    read_artifact,
)
from serving.predictors import Batch, OnnxPredictor, Output, SklearnPredictor
from serving.spec import MISSING_STRING, ONNX_FILE, Column, ServingSpec

TOLERANCE = 1e-5  # absolute on probabilities; relative (to max(1, |y|)) on regression values
EXTREMES = (1.7976931348623157e308, -1.7976931348623157e308, 1e300, -1e300, 3.5e38, -1e-300, 0.0)
SEED = 20261201


class Unsupported(ValueError):
    """The model has a part the compiled path does not reproduce."""


# -- loading -------------------------------------------------------------------------------
def load_estimator(art: Artifact) -> Any:
    """The fitted model, trusting exactly the types its MLmodel file lists (never all)."""
    try:
        if art.serialization == "skops":
            import skops.io

            return skops.io.load(art.model_file, trusted=art.trusted_types or None)
        if art.serialization in ("pickle", "cloudpickle"):
            import cloudpickle

            with open(art.model_file, "rb") as fh:
                return cloudpickle.load(fh)  # noqa: S301 - the registry's own artifact
    except Exception as exc:  # noqa: BLE001 - any loader failure is a load failure
        msg = " ".join(str(exc).split())[:400]
        raise ModelLoadError(f"cannot load {art.model_file}: {type(exc).__name__}: {msg}") from exc
    raise ModelLoadError(f"unknown serialization format {art.serialization!r}")


def final_estimator(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def describe(model: Any, art: Artifact) -> tuple[str, list[Any]]:
    """(task, classes in the estimator's `classes_` order)."""
    est = final_estimator(model)
    declared = str(art.metadata.get("task") or "")
    classes = getattr(est, "classes_", None)
    task = declared or ("classification" if classes is not None else "regression")
    if task not in ("classification", "regression"):
        raise ModelLoadError(f"MLmodel metadata task {declared!r} is not classification|regression")
    if task == "classification":
        if classes is None:
            raise ModelLoadError("a classification model without classes_")
        return task, [_py(c) for c in classes]
    return task, []


def input_columns(art: Artifact, model: Any) -> tuple[list[Column] | None, int | None, str | None]:
    """(columns, None, None) or (None, width, dtype): from the signature, else the estimator."""
    if art.features is not None:
        return [Column(f.name, f.type, f.required) for f in art.features], None, None
    if art.tensor is not None:
        return None, art.tensor.width, art.tensor.dtype
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        return [Column(str(n), "double") for n in names], None, None
    width = getattr(model, "n_features_in_", None)
    if width:
        return None, int(width), "float64"
    raise ModelLoadError("the model has no signature and no feature_names_in_/n_features_in_")


def encoder_categories(model: Any, columns: list[Column]) -> None:
    """Known categories (and the unknown-value policy) of each column an encoder reads."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    by_name = {c.name: c for c in columns}
    for step in getattr(model, "steps", [(None, model)]):
        ct = step[1]
        if not isinstance(ct, ColumnTransformer):
            continue
        for _, trans, cols in ct.transformers_:
            inner = getattr(trans, "steps", [(None, trans)])
            encoders = [s for _, s in inner if isinstance(s, OneHotEncoder | OrdinalEncoder)]
            if not encoders:
                continue
            cols = [cols] if isinstance(cols, str) else list(cols)
            enc = encoders[0]
            names = [
                ct.feature_names_in_[c] if isinstance(c, int | np.integer) else c for c in cols
            ]
            for name, cats in zip(names, enc.categories_, strict=False):
                column = by_name.get(str(name))
                if column is None or column.type != "string":
                    continue
                column.categories = [str(c) for c in cats if isinstance(c, str)]
                column.unknown = "error" if enc.handle_unknown == "error" else "ignore"


# -- the check records ---------------------------------------------------------------------
def check_batches(spec: ServingSpec, model: Any, example: list[list[Any]]) -> list[Batch]:
    """Seeded random records: normal values, nulls in every column, unknown categories, extreme
    finite values, and the input example; as one batch each, singles are made by the caller."""
    rng = np.random.default_rng(SEED)
    n = 64
    if spec.columns is None:
        width = spec.tensor_width or 1
        center, scale = _numeric_scale(model, width)
        rows = (rng.normal(size=(n, width)) * scale + center).tolist()
        rows[0] = [float(v) for v in center]
        extreme = [[rng.choice(EXTREMES) if rng.uniform() < 0.3 else v for v in r] for r in rows]
        if spec.tensor_dtype and spec.tensor_dtype.startswith(("int", "uint")):
            rows = [[round(v) for v in r] for r in rows]
            extreme = [[round(v) if abs(v) < 1e15 else 0 for v in r] for r in extreme]
        batches = [rows, extreme[:16]] + ([example] if example else [])
        if spec.tensor_nullable:
            batches.append([[None if rng.uniform() < 0.3 else v for v in r] for r in rows[:16]])
        return [Batch(size=len(b), rows=[list(r) for r in b]) for b in batches if b]

    names = spec.input_names
    center, scale = _numeric_scale(model, len(names))
    records = []
    for _ in range(n):
        rec: dict[str, Any] = {}
        for i, col in enumerate(spec.columns):
            rec[col.name] = _random_value(col, rng, center[i], scale[i])
        records.append(rec)
    nulls = [dict(r) for r in records[:24]]
    for i, rec in enumerate(nulls):  # every column null somewhere, several at once too
        for j, col in enumerate(spec.columns):
            if col.nullable and (j == i % len(names) or rng.uniform() < 0.2):
                rec[col.name] = None
    all_null = {c.name: None for c in spec.columns if c.nullable}
    nulls.append({**records[0], **all_null})
    unknown = [dict(r) for r in records[:8]]
    for rec in unknown:
        for col in spec.columns:
            if col.type == "string" and col.unknown == "ignore":
                rec[col.name] = f"never-seen-{rng.integers(1000)}"
    extreme = [dict(r) for r in records[:16]]
    for rec in extreme:
        for col in spec.columns:
            if col.type in ("double", "float") and rng.uniform() < 0.4:
                rec[col.name] = float(rng.choice(EXTREMES))
    examples = [dict(zip(names, r, strict=False)) for r in example if len(r) == len(names)]
    batches = [records, nulls, unknown, extreme] + ([examples] if examples else [])
    return [_column_batch(b, names) for b in batches if b]


def _column_batch(records: list[dict[str, Any]], names: list[str]) -> Batch:
    return Batch(size=len(records), columns={n: [r[n] for r in records] for n in names})


def _random_value(col: Column, rng: np.random.Generator, center: float, scale: float) -> Any:
    if col.type == "string":
        cats = col.categories or ["a", "b", "c"]
        return str(rng.choice(cats))
    if col.type == "boolean":
        return bool(rng.uniform() < 0.5)
    value = float(rng.normal(center, scale))
    return round(value) if col.type in ("long", "integer") else value


def _numeric_scale(model: Any, width: int) -> tuple[list[float], list[float]]:
    """Center and spread of the numeric inputs, from a fitted StandardScaler when there is one
    (column order of the scaler's inputs is not always the signature's: fall back to N(0, 10))."""
    center, scale = [0.0] * width, [10.0] * width
    steps = getattr(model, "steps", [])
    first = steps[0][1] if steps else None
    mean, std = getattr(first, "mean_", None), getattr(first, "scale_", None)
    if mean is not None and std is not None and len(mean) == width:
        center, scale = [float(v) for v in mean], [float(v) or 1.0 for v in std]
    return center, scale


def probe_nullable(spec: ServingSpec, sk: SklearnPredictor, batch: Batch) -> None:
    """A column is nullable when sklearn scores a null there (an imputer, or an estimator that
    takes missing values); otherwise a null in it is a 422 naming the field."""
    if spec.columns is None:
        probe = Batch(size=1, rows=[[None] * (spec.tensor_width or 1)])
        spec.tensor_nullable = _scores(sk, probe)
        return
    base = {name: values[0] for name, values in (batch.columns or {}).items()}
    for col in spec.columns:
        probe = Batch(size=1, columns={k: [None if k == col.name else v] for k, v in base.items()})
        col.nullable = _scores(sk, probe)


def _scores(sk: SklearnPredictor, batch: Batch) -> bool:
    try:
        return not sk.predict(batch).rejected
    except (ValueError, TypeError):
        return False


# -- ONNX ----------------------------------------------------------------------------------
def tree_precision(est: Any) -> bool:
    """True for sklearn's tree models that compute on float32 inputs (sklearn.tree and the
    forests over it). HistGradientBoosting compares float64 inputs with float64 thresholds: it
    stays in float64 (`_double_thresholds`)."""
    from sklearn.ensemble import BaseEnsemble
    from sklearn.tree import BaseDecisionTree

    if isinstance(est, BaseDecisionTree):
        return True
    base = getattr(est, "estimators_", None)
    return (
        isinstance(est, BaseEnsemble)
        and base is not None
        and len(base) > 0
        and (tree_precision(np.ravel(base)[0]))
    )


def to_onnx(model: Any, spec: ServingSpec) -> bytes:
    """The hybrid graph (module docstring) as serialized ONNX; raises Unsupported."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
    from skl2onnx.sklapi import CastTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    est = final_estimator(model)
    dtype = np.float32 if spec.estimator_dtype == "float32" else np.float64
    steps = list(getattr(model, "steps", [])[:-1])
    cast = CastTransformer(dtype=dtype)
    cast.fit(np.zeros((1, 1), dtype=np.float64))
    graph_model = Pipeline([*[(n, s) for n, s in steps], ("conveyor_cast", cast), ("est", est)])
    if spec.columns is None:
        types = [("input", DoubleTensorType([None, spec.tensor_width]))]
    else:
        types = [
            (
                c.name,
                StringTensorType([None, 1]) if c.type == "string" else DoubleTensorType([None, 1]),
            )
            for c in spec.columns
        ]
    options = {id(est): {"zipmap": False}} if spec.task == "classification" else None
    try:
        onx, topology = convert_sklearn(
            graph_model,
            initial_types=types,
            options=options,
            target_opset={"": 19, "ai.onnx.ml": 3},
            custom_conversion_functions={SimpleImputer: _convert_imputer},
            intermediate=True,
        )
    except Unsupported:
        raise
    except Exception as exc:  # noqa: BLE001 - skl2onnx raises many kinds for "cannot convert"
        reason = " ".join(str(exc).split())[:300]
        raise Unsupported(f"skl2onnx: {type(exc).__name__}: {reason}") from None
    casts = [op for op in topology.unordered_operator_iterator() if op.raw_operator is cast]
    if len(casts) != 1:
        raise Unsupported("cannot find the preprocessed features in the graph")
    _missing_like_sklearn(onx, est)
    _double_thresholds(onx, est)
    _binary_scores_by_regressor(onx)
    return _expose_features(onx, spec, casts[0].inputs[0].onnx_name)


def _missing_like_sklearn(onx: Any, est: Any) -> None:
    """Send a NaN down the branch sklearn's own trees send it (`tree_.missing_go_to_left`,
    set at fit time even without missing values in training), which skl2onnx leaves out: a
    forest without an imputer then answers a null as sklearn does. Forests and single trees."""
    from onnx import helper
    from sklearn.tree import BaseDecisionTree

    trees = [est] if isinstance(est, BaseDecisionTree) else list(getattr(est, "estimators_", []))
    if not trees or not all(
        isinstance(t, BaseDecisionTree) and hasattr(t.tree_, "missing_go_to_left") for t in trees
    ):
        return
    for node in onx.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {a.name: a for a in node.attribute}
        tree_ids, node_ids = attrs["nodes_treeids"].ints, attrs["nodes_nodeids"].ints
        modes = attrs["nodes_modes"].strings
        tracks = [
            0 if mode == b"LEAF" else int(trees[t].tree_.missing_go_to_left[n])
            for t, n, mode in zip(tree_ids, node_ids, modes, strict=True)
        ]
        if "nodes_missing_value_tracks_true" in attrs:
            node.attribute.remove(attrs["nodes_missing_value_tracks_true"])
        node.attribute.append(helper.make_attribute("nodes_missing_value_tracks_true", tracks))


def _double_thresholds(onx: Any, est: Any) -> None:
    """HistGradientBoosting splits float64 inputs on float64 thresholds; skl2onnx writes them
    as float32 (`nodes_values`), which sends a value within a float32 step of a threshold (as
    repeated values and imputed medians are: HGB's thresholds are often data values) down the
    other branch: answers off by a whole leaf. The thresholds go in as doubles instead
    (`nodes_values_as_tensor`, ai.onnx.ml 3; onnxruntime compares in double), and the tree
    op's float32 output is cast to the double type skl2onnx declared."""
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import (
        BaseHistGradientBoosting,
    )

    if not isinstance(est, BaseHistGradientBoosting):
        return
    thresholds = np.array(
        [
            0.0 if node["is_leaf"] else float(node["num_threshold"])
            for per_iteration in est._predictors
            for predictor in per_iteration
            for node in predictor.nodes
        ]
    )
    graph = onx.graph
    trees = [n for n in graph.node if n.op_type.startswith("TreeEnsemble")]
    if len(trees) != 1:
        raise Unsupported(f"HistGradientBoosting: {len(trees)} tree ops in the graph, not 1")
    (tree,) = trees
    attrs = {a.name: a for a in tree.attribute}
    written = np.array(attrs["nodes_values"].floats, dtype=np.float32)
    if not np.array_equal(written, thresholds.astype(np.float32)):  # not skl2onnx's node order
        raise Unsupported("HistGradientBoosting: the graph's nodes are not the model's")
    tree.attribute.remove(attrs["nodes_values"])
    tree.attribute.append(
        helper.make_attribute("nodes_values_as_tensor", numpy_helper.from_array(thresholds))
    )
    index = 0 if tree.op_type == "TreeEnsembleRegressor" else 1  # values; classifier: scores
    declared = tree.output[index]
    tree.output[index] = f"{declared}_float32"
    position = list(graph.node).index(tree) + 1
    graph.node.insert(
        position, helper.make_node("Cast", [tree.output[index]], [declared], to=TensorProto.DOUBLE)
    )
    for opset in onx.opset_import:
        if opset.domain == "ai.onnx.ml":
            opset.version = max(opset.version, 3)


def _binary_scores_by_regressor(onx: Any) -> None:
    """A binary boosted classifier (one score column, LOGISTIC: HistGradientBoosting and
    GradientBoosting) scored by the tree regressor op plus a Sigmoid, with its label the
    probabilities' argmax: the same trees and arithmetic, but onnxruntime's classifier op spends
    a fifth of its time on per-row bookkeeping for two classes (3.09 against 2.58 ms for 100
    trees on 1000 rows, measured). The parity check holds the result to sklearn like any graph.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = onx.graph
    trees = [n for n in graph.node if n.op_type == "TreeEnsembleClassifier"]
    if len(trees) != 1:
        return
    (tree,) = trees
    attrs = {a.name: helper.get_attribute_value(a) for a in tree.attribute}
    labels = attrs.get("classlabels_int64s") or attrs.get("classlabels_strings") or []
    if (
        attrs.get("post_transform") != b"LOGISTIC"
        or len(labels) != 2
        or set(attrs["class_ids"]) != {0}
    ):
        return
    label, scores = tree.output
    raw, positive, negative, index = (f"{scores}_{n}" for n in ("raw", "p1", "p0", "argmax"))
    regressor = {k: v for k, v in attrs.items() if k.startswith("nodes_") or k.startswith("base")}
    for name in ("ids", "nodeids", "treeids", "weights", "weights_as_tensor"):
        if f"class_{name}" in attrs:
            regressor[f"target_{name}"] = attrs[f"class_{name}"]
    labels_tensor = (
        numpy_helper.from_array(np.array(labels, dtype=np.int64))
        if "classlabels_int64s" in attrs
        else helper.make_tensor("labels", TensorProto.STRING, [2], labels)
    )
    one = numpy_helper.from_array(np.ones((1, 1), dtype=np.float32))
    nodes = [
        helper.make_node(
            "TreeEnsembleRegressor",
            list(tree.input),
            [raw],
            domain="ai.onnx.ml",
            n_targets=1,
            post_transform="NONE",
            aggregate_function="SUM",
            **regressor,
        ),
        helper.make_node("Sigmoid", [raw], [positive]),
        helper.make_node("Constant", [], [f"{scores}_one"], value=one),
        helper.make_node("Sub", [f"{scores}_one", positive], [negative]),
        helper.make_node("Concat", [negative, positive], [scores], axis=1),
        helper.make_node("ArgMax", [scores], [index], axis=1, keepdims=0),
        helper.make_node("Constant", [], [f"{label}_classes"], value=labels_tensor),
        helper.make_node("Gather", [f"{label}_classes", index], [label], axis=0),
    ]
    position = list(graph.node).index(tree)
    graph.node.remove(tree)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)


def _expose_features(onx: Any, spec: ServingSpec, features: str) -> bytes:
    """Name the outputs and add the preprocessed features (the Cast's input) as an output."""
    from onnx import TensorProto, helper

    graph = onx.graph
    spec.onnx_inputs = [i.name for i in graph.input]
    graph.output.append(helper.make_tensor_value_info(features, TensorProto.DOUBLE, None))
    outputs = [o.name for o in graph.output]
    if spec.task == "classification":
        spec.onnx_outputs = {"label": outputs[0], "scores": outputs[1], "features": features}
    else:
        spec.onnx_outputs = {"values": outputs[0], "features": features}
    return onx.SerializeToString()


def _convert_imputer(scope: Any, operator: Any, container: Any) -> None:
    """SimpleImputer from standard ops: fill where the value is missing (NaN for numbers, the
    MISSING_STRING marker for strings). Works in float64, which ORT's Imputer does not."""
    from onnx import TensorProto

    imp = operator.raw_operator
    if getattr(imp, "add_indicator", False):
        raise Unsupported("SimpleImputer(add_indicator=True)")
    stats = list(imp.statistics_)
    is_string = operator.inputs[0].type.__class__.__name__ == "StringTensorType"
    x, y = operator.inputs[0].full_name, operator.outputs[0].full_name
    mv = imp.missing_values
    nan_missing = mv is None or (isinstance(mv, float) and math.isnan(mv))
    mask = scope.get_unique_variable_name("missing")
    fill = scope.get_unique_variable_name("fill")
    if is_string:
        if any(not isinstance(s, str) for s in stats):
            raise Unsupported("SimpleImputer on strings without a string fill value")
        marker = scope.get_unique_variable_name("marker")
        value = MISSING_STRING if nan_missing else str(mv)
        container.add_initializer(marker, TensorProto.STRING, [1], [value.encode()])
        container.add_initializer(
            fill, TensorProto.STRING, [len(stats)], [s.encode() for s in stats]
        )
        container.add_node("Equal", [x, marker], [mask], name=scope.get_unique_operator_name("Eq"))
    else:
        if any(isinstance(s, float) and math.isnan(s) for s in stats) and not getattr(
            imp, "keep_empty_features", False
        ):
            raise Unsupported("SimpleImputer dropped an all-missing column")
        values = [float(s) for s in stats]
        container.add_initializer(fill, TensorProto.DOUBLE, [len(values)], values)
        if nan_missing:
            container.add_node("IsNaN", [x], [mask], name=scope.get_unique_operator_name("IsNaN"))
        else:
            target = scope.get_unique_variable_name("missing_value")
            container.add_initializer(target, TensorProto.DOUBLE, [1], [float(mv)])
            container.add_node(
                "Equal", [x, target], [mask], name=scope.get_unique_operator_name("Eq")
            )
    container.add_node("Where", [mask, fill, x], [y], name=scope.get_unique_operator_name("Where"))


# -- parity --------------------------------------------------------------------------------
def compare(expected: Output, got: Output, spec: ServingSpec) -> str | None:
    """None when `got` matches `expected` within TOLERANCE, else the first difference."""
    if expected.rejected.keys() != got.rejected.keys():
        return (
            f"refused records differ: sklearn {sorted(expected.rejected)[:5]}, "
            f"compiled {sorted(got.rejected)[:5]}"
        )
    if expected.rejected:
        return None
    if spec.task == "regression":
        e, g = (
            np.asarray(expected.values, float),
            np.asarray(got.values, float).reshape(np.shape(expected.values)),
        )
        err = np.abs(e - g) / np.maximum(1.0, np.abs(e))
        return None if err.max() <= TOLERANCE else f"values differ by {err.max():.3g} (relative)"
    if expected.proba is not None:
        err = float(np.abs(expected.proba - got.proba).max())
        if err > TOLERANCE:
            return f"probabilities differ by {err:.3g}"
        top = np.sort(expected.proba, axis=1)
        tie = top[:, -1] - top[:, -2] <= 2 * TOLERANCE if top.shape[1] > 1 else None
    else:
        tie = None
    flips = [
        i
        for i, (a, b) in enumerate(zip(expected.labels, got.labels, strict=True))
        if a != b and (tie is None or not tie[i])
    ]
    return f"labels differ on {len(flips)} records" if flips else None


def singles(batch: Batch) -> list[Batch]:
    if batch.rows is not None:
        return [Batch(size=1, rows=[r]) for r in batch.rows]
    cols = batch.columns or {}
    return [Batch(size=1, columns={k: [v[i]] for k, v in cols.items()}) for i in range(batch.size)]


def merge(outputs: list[Output]) -> Output:
    rejected = {i: r for i, o in enumerate(outputs) for r in o.rejected.values()}
    if rejected or not outputs:
        return Output(rejected=rejected)
    first = outputs[0]
    return Output(
        labels=[lab for o in outputs for lab in o.labels] if first.labels is not None else None,
        proba=np.vstack([o.proba for o in outputs]) if first.proba is not None else None,
        values=np.concatenate([np.atleast_1d(o.values) for o in outputs])
        if first.values is not None
        else None,
    )


def parity(sk: SklearnPredictor, fast: OnnxPredictor, batches: list[Batch], spec: ServingSpec):
    """(report, failure or None): each batch whole and record by record, on both paths."""
    checked = 0
    for batch in batches:
        reference = _guarded(sk, batch)
        one_by_one = merge([_guarded(sk, b) for b in singles(batch)])
        # sklearn itself on a batch vs. record by record: the DataFrame policy holds
        for label, got in (
            ("compiled, batch", fast.predict(batch)),
            ("compiled, single records", merge([fast.predict(b) for b in singles(batch)])),
            ("sklearn, single records", one_by_one),
        ):
            diff = compare(reference, got, spec)
            if diff:
                return {"records": checked, "tolerance": TOLERANCE}, f"{label}: {diff}"
        checked += batch.size
    return {"records": checked, "tolerance": TOLERANCE, "single_and_batch": True}, None


def _guarded(sk: SklearnPredictor, batch: Batch) -> Output:
    try:
        return sk.predict(batch)
    except (ValueError, TypeError) as exc:
        return Output(rejected={i: str(exc) for i in range(batch.size)})


# -- the whole step ------------------------------------------------------------------------
def compile_model(model_dir: str, out_dir: str, *, onnx: bool = True) -> ServingSpec:
    art = read_artifact(model_dir)
    model = load_estimator(art)
    task, classes = describe(model, art)
    columns, width, tensor_dtype = input_columns(art, model)
    est = final_estimator(model)
    spec = ServingSpec(
        fingerprint=fingerprint(art.model_file),
        task=task,
        classes=classes,
        predict_fn=art.predict_fn,
        columns=columns,
        tensor_width=width,
        tensor_dtype=tensor_dtype,
        has_proba=task == "classification" and hasattr(est, "predict_proba"),
        estimator_dtype="float32" if tree_precision(est) else "float64",
        allow_nan=_allows_nan(est),
        versions=_versions(),
    )
    if columns is not None:
        encoder_categories(model, columns)
    sk = SklearnPredictor(model, spec)
    example = example_rows(art.example, spec.input_names or None)
    batches = check_batches(spec, model, example)
    probe_nullable(spec, sk, batches[0])
    batches = check_batches(spec, model, example)  # again: nulls only where they are allowed
    if task == "classification":
        spec.label_from_proba = _label_from_proba(sk, batches[0]) if spec.has_proba else False
    spec.path, spec.note = "sklearn", "FAST_PATH=off: compiled path not built"
    if onnx:
        spec.path, spec.note = _try_onnx(model, spec, sk, batches, out_dir)
    spec.save(out_dir)
    return spec


def _try_onnx(model, spec, sk, batches, out_dir) -> tuple[str, str]:
    if spec.predict_fn not in COMPILED_PREDICT_FNS:
        return "sklearn", f"pyfunc_predict_fn {spec.predict_fn!r} has no compiled form"
    try:
        graph = to_onnx(copy.deepcopy(model), spec)
    except Unsupported as exc:
        return "sklearn", f"not convertible: {exc}"
    path = os.path.join(out_dir, ONNX_FILE)
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(graph)
    try:
        fast = OnnxPredictor(path, spec)
        report, failure = parity(sk, fast, batches, spec)
    except Exception as exc:  # noqa: BLE001 - a graph ORT cannot load or run is a failed check
        report, failure = (
            {},
            f"onnxruntime: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
        )
    spec.parity = report
    if failure:
        os.unlink(path)
        spec.onnx_outputs = {}
        return "sklearn", f"parity check failed: {failure}"
    return "onnx", (
        f"compiled to ONNX; matches sklearn on {report['records']} records "
        f"(nulls, unknown categories, extremes; single and batch) within {TOLERANCE:g}"
    )


def _label_from_proba(sk: SklearnPredictor, batch: Batch) -> bool:
    try:
        Xt, _ = sk.features(batch)
        proba = sk.estimator.predict_proba(Xt)
        predicted = [_py(v) for v in sk.estimator.predict(Xt)]
    except (ValueError, TypeError):
        return False
    return predicted == [sk.classes[i] for i in np.argmax(proba, axis=1)]


def _allows_nan(est: Any) -> bool:
    try:
        from sklearn.utils import get_tags

        return bool(get_tags(est).input_tags.allow_nan)
    except (ImportError, AttributeError, TypeError):
        return False


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for name in ("scikit-learn", "skl2onnx", "onnx", "onnxruntime"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _py(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def summary(spec: ServingSpec) -> dict[str, Any]:
    doc = asdict(spec)
    return {k: doc[k] for k in ("path", "note", "task", "predict_fn", "fingerprint", "parity")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.convert", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("model_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--no-onnx", action="store_true", help="spec only: serve with sklearn")
    args = parser.parse_args(argv)
    try:
        spec = compile_model(args.model_dir, args.out_dir, onnx=not args.no_onnx)
    except ModelLoadError as exc:
        print(f"serving.convert: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary(spec), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
