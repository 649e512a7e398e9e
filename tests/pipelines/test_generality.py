"""Generality: scikit-learn's bundled tables and one messy table nobody designed the pipeline
for, written as CSV files with spaces and parentheses in column names, blanked values and (on
some) a date column, each taken through the stages (ingest, validate, train, evaluate,
register) on a copy of the repository from params.yaml alone, every built-in family on a table
of its task (TABLE_FAMILIES). Each trains, evaluates and registers (local MLflow store), and the
real prediction server, in process, answers /predict as the in-process model does.

The stages run in this process, one table after the other: as `dvc repro` subprocesses the
module took 5 minutes, nearly all of it starting the stage processes (importing sklearn and
mlflow), not fitting. `dvc repro` itself, its stage caching and its outputs are
tests/pipelines/test_dvc_pipeline.py's and the training image's (tests/docker/test_train_image.py).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn import datasets

from pipelines.config import load_params, validate
from pipelines.data import features, load_window, resolve_task, split
from pipelines.evaluate import evaluate
from pipelines.ingest import ingest
from pipelines.register import register
from pipelines.scoring import METRICS
from pipelines.train import train
from pipelines.validate import validate as validate_batch
from tests.pipelines.dvc_repo import REPO, copy_repo

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # every stage, six tables

FAMILIES = {
    "classification": ["logistic_regression", "random_forest", "hist_gradient_boosting"],
    "regression": ["ridge", "random_forest", "hist_gradient_boosting"],
}
BLANK_FRACTION = 0.05


@dataclass
class Table:
    """A CSV and the `schema` params that describe it."""

    frame: pd.DataFrame
    schema: dict[str, Any]


def _spaced(name: str) -> str:
    """`mean_radius` -> `mean radius (raw)`: spaces and parentheses in every name."""
    name = name.replace("_", " ")
    return name if "(" in name else f"{name} (raw)"


def _blank(frame: pd.DataFrame, columns: list[str], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    for col in columns:
        frame[col] = frame[col].mask(rng.random(len(frame)) < BLANK_FRACTION)
    return frame


def _bundled(loader, target: str, seed: int, labels=None, shuffle: bool = True):
    """A bundled table with readable, awkward column names (rows shuffled, or as shipped)."""
    bunch = loader(as_frame=True)
    frame = bunch.frame.rename(
        columns={"target": target, **{c: _spaced(c) for c in bunch.feature_names}}
    )
    if shuffle:
        frame = frame.sample(frac=1, random_state=seed).reset_index(drop=True)
    if labels is not None:
        frame[target] = [labels[int(v)] for v in frame[target]]
    return frame, [_spaced(c) for c in bunch.feature_names]


def _dates(n: int, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01")
    return pd.Series(start + pd.to_timedelta(rng.integers(0, 365 * 24, n), unit="h")).astype(str)


def iris() -> Table:
    frame, numeric = _bundled(
        datasets.load_iris, "species (label)", 1, labels=["setosa", "versicolor", "virginica"]
    )
    frame.insert(0, "sample id", [f"S-{i:04d}" for i in range(len(frame))])
    frame["measured at"] = _dates(len(frame), 1)  # ISO datetime text
    schema = {
        "target": "species (label)",
        "id_column": "sample id",
        "date_column": "measured at",
        "numeric_features": numeric,
    }
    return Table(_blank(frame, numeric, 1), schema)


def wine() -> Table:
    """As shipped, sorted by class, and no date: the random split must still see every class."""
    frame, numeric = _bundled(
        datasets.load_wine,
        "cultivar (class)",
        2,
        labels=["barolo", "grignolino", "barbera"],
        shuffle=False,
    )
    labels = frame["cultivar (class)"]
    assert (labels != labels.shift()).sum() == 3  # three blocks: one per class
    return Table(
        _blank(frame, numeric, 2), {"target": "cultivar (class)", "numeric_features": numeric}
    )


def breast_cancer() -> Table:
    frame, numeric = _bundled(datasets.load_breast_cancer, "malignant (0/1)", 3)
    frame["malignant (0/1)"] = 1 - frame["malignant (0/1)"]
    bands = pd.qcut(frame["mean radius (raw)"], 3, labels=["small", "medium", "large"])
    frame["size band (tertile)"] = bands.astype(str)
    frame["biopsy year"] = np.random.default_rng(3).integers(2000, 2020, len(frame))  # int years
    schema = {
        "target": "malignant (0/1)",
        "date_column": "biopsy year",
        "numeric_features": numeric,
        "categorical_features": ["size band (tertile)"],
    }
    return Table(_blank(frame, [*numeric, "size band (tertile)"], 3), schema)


def digits() -> Table:
    bunch = datasets.load_digits(as_frame=True)
    names = {c: f"pixel ({c[6]}, {c[8]})" for c in bunch.feature_names}  # pixel_r_c
    frame = bunch.frame.rename(columns={"target": "digit (0-9)", **names})
    frame = frame.sample(n=600, random_state=4).reset_index(drop=True)
    numeric = list(names.values())
    return Table(_blank(frame, numeric, 4), {"target": "digit (0-9)", "numeric_features": numeric})


def diabetes() -> Table:
    frame, numeric = _bundled(datasets.load_diabetes, "progression (1 year)", 5)
    numeric.remove("sex (raw)")
    frame["sex (F/M)"] = np.where(frame.pop("sex (raw)") > 0, "M", "F")
    frame["visit date"] = _dates(len(frame), 5).str[:10]  # date text
    schema = {
        "target": "progression (1 year)",
        "date_column": "visit date",
        "numeric_features": numeric,
        "categorical_features": ["sex (F/M)"],
    }
    return Table(_blank(frame, [*numeric, "sex (F/M)"], 5), schema)


def messy() -> Table:
    """A table as exports come: mixed-case categories, `NA` strings, an integer year, a column
    the schema does not name, and rows sorted by class."""
    rng = np.random.default_rng(6)
    n = 900
    outcome = rng.choice(["Renewed", "cancelled", "UPGRADED"], n, p=[0.5, 0.3, 0.2])
    fee = np.round(
        rng.normal(40, 8, n)
        + np.select([outcome == "UPGRADED", outcome == "cancelled"], [15, -6], 0),
        2,
    )
    calls = rng.poisson(np.where(outcome == "cancelled", 4, 1))
    plan = np.where(
        outcome == "UPGRADED",
        rng.choice(["Premium", "premium", "PREMIUM"], n),
        rng.choice(["Basic", "basic", "Standard", "standard"], n),
    )
    frame = pd.DataFrame(
        {
            "Customer ID": [f"c{i}" for i in range(n)],
            "Signup Year": rng.integers(2012, 2024, n),
            "Monthly Fee ($)": fee.astype(object),
            "Plan Type": plan.astype(object),
            "Region (zone)": rng.choice(["North", "south", "EAST", "West "], n).astype(object),
            "Support Calls (#)": calls,
            "Notes": rng.choice(["", "called twice", "n/a"], n),
            "Outcome": outcome,
        }
    )
    for col in ("Monthly Fee ($)", "Plan Type", "Region (zone)"):
        frame.loc[rng.random(n) < BLANK_FRACTION, col] = "NA"
    frame = frame.sort_values("Outcome", kind="mergesort").reset_index(drop=True)
    schema = {
        "target": "Outcome",
        "id_column": "Customer ID",
        "date_column": "Signup Year",
        "numeric_features": ["Monthly Fee ($)", "Support Calls (#)"],
        "categorical_features": ["Plan Type", "Region (zone)"],
    }
    return Table(frame, schema)


TABLES = {
    f.__name__: functools.cache(f) for f in (iris, wine, breast_cancer, digits, diabetes, messy)
}
TASKS = {"diabetes": "regression"}  # what the pipeline must infer (schema.task stays null)


def task_of(table: str) -> str:
    return TASKS.get(table, "classification")


# Which built-ins each table trains: every family of each task on at least one table (the
# regression table takes all three), every table at least once. The full table x family cross
# would double the module's time for little more: the families' own conversions and
# predictions are crossed with every task in tests/pipelines/test_train.py and
# tests/serving/test_convert.py.
TABLE_FAMILIES = {
    "iris": ["logistic_regression"],
    "wine": ["random_forest"],
    "breast_cancer": ["hist_gradient_boosting"],
    "digits": ["random_forest"],
    "diabetes": FAMILIES["regression"],
    "messy": ["logistic_regression"],
}


def families(table: str) -> list[str]:
    return TABLE_FAMILIES[table]


CASES = [(t, f) for t in TABLES for f in families(t)]


@dataclass
class Outcome:
    repo: Path
    output: str  # the stages' log lines
    metrics: dict[str, Any]
    registration: dict[str, Any]
    validation: dict[str, Any]
    plots: dict[str, Any]  # file name under reports/plots -> rows
    model_dir: Path


def params_for(table: Table, csv: Path, name: str) -> dict[str, Any]:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["ingest"].update(source=str(csv), date="2026-01-01")
    raw["schema"] = {
        "target": None,
        "task": None,
        "max_classes": raw["schema"]["max_classes"],
        "id_column": None,
        "date_column": None,
        "numeric_features": [],
        "categorical_features": [],
        "drop_columns": [],
        **table.schema,
    }
    raw["validation"]["ranges"] = {}
    raw["register"]["model_name"] = f"generality-{name}"
    validate(raw)  # a mistake in this test's params fails here, not in a stage
    return raw


def run_table(name: str, root: Path) -> dict[str, Outcome]:
    """The table's batch ingested and validated once, then each family trained, evaluated and
    registered on it, as `dvc repro` after a `train.estimator` change would."""
    table = TABLES[name]()
    repo = copy_repo(root / name)
    csv = repo / "incoming" / f"{name}.csv"
    csv.parent.mkdir()
    table.frame.to_csv(csv, index=False)
    (repo / "params.yaml").write_text(yaml.safe_dump(params_for(table, csv, name), sort_keys=False))
    params = load_params(repo / "params.yaml")
    outcomes = {}
    for i, family in enumerate(families(name)):
        params.train.estimator = family
        output = io.StringIO()
        with contextlib.redirect_stderr(output):  # the stages' log lines
            for stage in (*((ingest, validate_batch) if i == 0 else ()), train, evaluate, register):
                stage(params, repo)
        kept = root / "models" / name / family
        shutil.copytree(repo / "models" / "model", kept)
        reports = repo / "reports"
        outcomes[family] = Outcome(
            repo=repo,
            output=output.getvalue(),
            metrics=json.loads((reports / "metrics.json").read_text()),
            registration=json.loads((reports / "registration.json").read_text()),
            validation=json.loads((reports / "validation.json").read_text()),
            plots={
                str(p.relative_to(reports / "plots")): json.loads(p.read_text())
                for p in (reports / "plots").rglob("*.json")
            },
            model_dir=kept,
        )
    return outcomes


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> dict[str, dict[str, Outcome] | BaseException]:
    """Every table through every family of its task; a table that fails fails its own tests.
    No deployment wiring from the caller's environment (the stages would use its MLflow)."""
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "AWS_", "DVC_"))]:
        del os.environ[key]  # restored after the module (tests/conftest.py)
    for key in ("MODEL_NAME", "CONVEYOR_IMAGE"):
        os.environ.pop(key, None)
    root = tmp_path_factory.mktemp("generality")
    results: dict[str, dict[str, Outcome] | BaseException] = {}
    for name in TABLES:
        try:
            results[name] = run_table(name, root)
        except Exception as exc:  # noqa: BLE001 -- reported by that table's tests
            results[name] = exc
    return results


def outcome(matrix, table: str, family: str) -> Outcome:
    result = matrix[table]
    if isinstance(result, BaseException):
        pytest.fail(f"{table}: {result}")
    return result[family]


@pytest.mark.parametrize(("table", "family"), CASES)
def test_every_family_trains_evaluates_and_registers(matrix, table, family):
    result = outcome(matrix, table, family)
    task = task_of(table)
    first = family == families(table)[0]
    metrics, plots = result.metrics, result.plots
    rows = metrics["holdout_rows"]
    if task == "classification":
        classes = TABLES[table]().frame[TABLES[table]().schema["target"]].nunique()
        assert set(metrics) == {*METRICS["classification"], "holdout_rows"}
        assert metrics["accuracy"] > 1.5 / classes, metrics  # clearly better than chance
        assert 0.5 < metrics["roc_auc"] <= 1 and metrics["log_loss"] > 0
        roc = [name for name in plots if name.startswith("roc/")]
        assert len(roc) == (1 if classes == 2 else classes), roc  # one curve per class
        assert len(plots["confusion.json"]) == rows and plots["predictions.json"] == []
    else:
        assert set(metrics) == {*METRICS["regression"], "holdout_rows"}
        assert metrics["r2"] > 0.2 and 0 < metrics["mae"] <= metrics["rmse"], metrics
        assert len(plots["predictions.json"]) == len(plots["residuals.json"]) == rows
        assert plots["confusion.json"] == [] and not [n for n in plots if n.startswith("roc/")]
    registration = result.registration
    assert registration["version"] == str(families(table).index(family) + 1)
    assert registration["task"] == task
    assert registration["decision"] in (("promoted",) if first else ("promoted", "challenger"))
    assert registration["reason"] and "schema changed" not in registration["reason"]


@pytest.mark.parametrize("table", list(TABLES))
def test_the_task_is_inferred_and_said_in_the_log(matrix, table):
    task = task_of(table)
    result = outcome(matrix, table, families(table)[0])
    assert f"train: task: {task} (inferred: target " in result.output


@pytest.mark.parametrize(("table", "family"), CASES)
def test_the_model_directory_keeps_the_serving_contract(matrix, table, family):
    result = outcome(matrix, table, family)
    schema = TABLES[table]().schema
    mlmodel = yaml.safe_load((result.model_dir / "MLmodel").read_text())
    meta = mlmodel["metadata"]
    assert meta["task"] == task_of(table)
    assert meta["target"] == schema["target"]
    if meta["task"] == "classification":
        json.dumps(meta["classes"])  # plain JSON values
        assert sorted(map(str, meta["classes"])) == sorted(
            map(str, TABLES[table]().frame[schema["target"]].unique())
        )
    else:
        assert "classes" not in meta
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [(c["name"], c["type"]) for c in inputs] == [
        *((c, "double") for c in schema["numeric_features"]),
        *((c, "string") for c in schema.get("categorical_features", [])),
    ]
    for name in ("input_example.json", "serving_input_example.json", "model.skops"):
        assert (result.model_dir / name).is_file(), name


def test_dates_and_unknown_columns_of_the_messy_table(matrix):
    result = outcome(matrix, "messy", "logistic_regression")
    assert result.validation["unknown_columns"] == ["Notes"]
    params = load_params(result.repo / "params.yaml")
    years = load_window(result.repo, params)["Signup Year"].dt.year
    assert (years.min(), years.max()) == (2012, 2023)  # years, not nanoseconds since 1970
    cancer = outcome(matrix, "breast_cancer", "hist_gradient_boosting").repo
    dates = load_window(cancer, load_params(cancer / "params.yaml"))["biopsy year"]
    assert dates.dt.year.between(2000, 2019).all() and (dates.dt.dayofyear == 1).all()


def _holdout(repo: Path) -> pd.DataFrame:
    """The holdout the pipeline scored, rebuilt with its own functions."""
    params = load_params(repo / "params.yaml")
    data = load_window(repo, params)
    task, _ = resolve_task(params, data[params.schema.target])
    return features(split(data, params, task)[1], params)


def _records(X: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        for row in X.to_dict(orient="records")
    ]


def _served_value(prediction: dict[str, Any]) -> float:
    """A regression prediction as the server returns it: `{"value": ...}` per record."""
    return float(prediction["value"])


@pytest.mark.parametrize(("table", "family"), CASES)
def test_the_server_answers_as_the_in_process_model(matrix, table, family):
    import mlflow.sklearn

    from serving.server import build
    from serving.settings import Settings
    from tests.helpers.asgi import Client

    result = outcome(matrix, table, family)
    X = _holdout(result.repo)
    model = mlflow.sklearn.load_model(str(result.model_dir))
    app, state = build(Settings(model_dir=str(result.model_dir), model_name="generality"))
    assert state.error is None, state.error
    resp = Client(app).post("/predict", _records(X))
    assert resp.status_code == 200, resp.text
    served = resp.json()["predictions"]
    assert len(served) == len(X)
    if task_of(table) == "regression":
        np.testing.assert_allclose(
            [_served_value(p) for p in served], model.predict(X), rtol=1e-5, atol=1e-6
        )
        return
    proba = model.predict_proba(X)
    classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
    assert [p["label"] for p in served] == [classes[i] for i in proba.argmax(axis=1)]
    np.testing.assert_allclose(
        [[p["probabilities"][str(c)] for c in classes] for p in served], proba, atol=1e-6
    )
