"""Compilation to ONNX for every family and task: the compiled path serves, and its answers equal
the in-process sklearn model's on random records with nulls, unknown categories and extremes;
what cannot be converted is served by sklearn, and says so."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from serving.convert import TOLERANCE
from serving.predictors import Batch
from tests.serving.conftest import FAMILIES, FEATURES, frame, load_reference

pytestmark = pytest.mark.integration


def random_records(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rec = {
            "tenure months": float(rng.uniform(-10, 100)),
            "monthly_charges (usd)": float(rng.normal(70, 40)),
            "support_calls": int(rng.integers(-2, 15)),
            "contract": str(rng.choice(["monthly", "annual", "two_year", "weekly"])),
            "region": str(rng.choice(["north", "south", "east", "west", "moon"])),
        }
        for name in FEATURES:
            if rng.uniform() < 0.15:
                rec[name] = None
        out.append(rec)
    return out


def columns(records: list[dict]) -> Batch:
    return Batch(size=len(records), columns={n: [r[n] for r in records] for n in FEATURES})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_compiles_and_matches_sklearn(family, family_dirs, load):
    model = load(family_dirs[family])
    assert model.path == "onnx", model.note
    assert model.spec.parity["records"] > 100 and model.spec.parity["single_and_batch"]
    reference = load_reference(family_dirs[family])
    records = random_records(300, seed=len(family))
    out = model.predict(columns(records))
    assert not out.rejected
    for i in range(0, 300, 60):  # single records answer as in a batch
        one = model.predict(columns(records[i : i + 1]))
        if model.spec.task == "regression":
            np.testing.assert_allclose(one.values, out.values[i : i + 1], rtol=1e-12)
        else:
            np.testing.assert_allclose(one.proba, out.proba[i : i + 1], atol=1e-12)
    df = frame(records)
    if model.spec.task == "regression":
        expected = reference.predict(df)
        np.testing.assert_allclose(out.values, expected, rtol=TOLERANCE, atol=TOLERANCE)
    else:
        np.testing.assert_allclose(out.proba, reference.predict_proba(df), atol=TOLERANCE)
        assert model.classes == [str(c) for c in reference.classes_]
        assert out.labels == [str(c) for c in reference.predict(df)]


def test_extreme_values_are_refused_on_both_paths(family_dirs, load):
    for family in ("lr", "rf", "ridge"):
        fast = load(family_dirs[family])
        slow = load(family_dirs[family], fast_path=False)
        records = random_records(6, seed=1)
        records[2]["monthly_charges (usd)"] = 1.7976931348623157e308
        records[4]["tenure months"] = -1e300
        for model in (fast, slow):
            assert sorted(model.predict(columns(records)).rejected) == [2, 4], family


def test_tensor_signature_model_compiles(tensor_dir, load):
    model = load(tensor_dir)
    assert model.path == "onnx" and model.spec.columns is None and model.spec.tensor_width == 4
    assert model.spec.predict_fn == "predict_proba"
    reference = load_reference(tensor_dir)
    rows = np.random.default_rng(0).normal(4, 2, size=(50, 4))
    out = model.predict(Batch(size=50, rows=rows.tolist()))
    np.testing.assert_allclose(out.proba, reference.predict_proba(rows), atol=TOLERANCE)
    assert model.classes == [0, 1, 2]


def test_forest_takes_nulls_as_sklearn_does(tensor_forest_dir, load):
    """A null reaches the trees (no imputer): each split sends it where sklearn's does."""
    model = load(tensor_forest_dir)
    assert model.path == "onnx" and model.spec.tensor_nullable, model.note
    rows = np.random.default_rng(3).normal(0, 0.05, size=(200, 10))
    rows[np.random.default_rng(4).uniform(size=rows.shape) < 0.2] = np.nan
    out = model.predict(Batch(size=200, rows=[[None if v != v else v for v in r] for r in rows]))
    expected = load_reference(tensor_forest_dir).predict(rows)
    np.testing.assert_allclose(out.values, expected, rtol=TOLERANCE)


def test_unconvertible_model_is_served_by_sklearn_and_says_why(unconvertible_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "serving.convert", str(unconvertible_dir), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["path"] == "sklearn"
    assert "not convertible" in summary["note"] and "FunctionTransformer" in summary["note"]
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_unloadable_model_exits_2_with_the_reason(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "MLmodel").write_text("flavors: {python_function: {}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "serving.convert", str(tmp_path / "m"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "serving.convert: the MLmodel file has no sklearn flavor: not an MLflow sklearn model"
    )


@pytest.mark.parametrize("kind", ["regressor", "classifier"])
def test_gradient_boosting_splits_values_on_its_thresholds_as_sklearn(kind, tmp_path, load):
    """HistGradientBoosting's thresholds are often data values (repeated values, imputed
    medians): a value on a threshold goes where sklearn's float64 comparison sends it, not
    where a float32 one would (a whole leaf off)."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tests.serving.conftest import save

    X, y = load_diabetes(return_X_y=True)
    X[np.random.default_rng(0).uniform(size=X.shape) < 0.05] = np.nan  # imputed: the median
    if kind == "classifier":
        y, estimator = y > np.median(y), HistGradientBoostingClassifier(max_iter=200)
    else:
        estimator = HistGradientBoostingRegressor(max_iter=200)
    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), estimator)
    model.fit(X[:300], y[:300])
    X = X[300:]  # other records, the same repeated values
    save(model, tmp_path / kind, X)
    served = load(tmp_path / kind)
    assert served.path == "onnx", served.note
    rows = [[None if v != v else float(v) for v in r] for r in X]
    out = served.predict(Batch(size=len(rows), rows=rows))
    if kind == "regressor":
        np.testing.assert_allclose(out.values, model.predict(X), rtol=TOLERANCE)
    else:
        np.testing.assert_allclose(out.proba, model.predict_proba(X), atol=TOLERANCE)
        # the graph's own label output (served when labels are not the probabilities' argmax)
        fast = served.predictor
        batch = Batch(size=len(rows), rows=rows)
        (labels,) = fast.session.run([served.spec.onnx_outputs["label"]], fast.feeds(batch))
        np.testing.assert_array_equal(labels.astype(int), model.predict(X).astype(int))
