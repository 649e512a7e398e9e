"""`train.window`: which batches and rows train, evaluate and register read, the holdout inside
the window, batches outside it never opened, and the window reported to MLflow and in every
stage's summary. The history has gaps (days without a batch), as a real one does."""

from __future__ import annotations

import json
import shutil

import mlflow
import pandas as pd
import pytest

from pipelines.common import REGISTRATION_FILE, TRAIN_RUN_FILE
from pipelines.data import dataset_dir, load_window, model_columns, read_split, window_plan
from pipelines.evaluate import evaluate
from pipelines.ingest import ingest
from pipelines.memory import Budget
from pipelines.register import register
from pipelines.train import train
from pipelines.validate import validate
from tests.pipelines.conftest import edit, repo_params

pytestmark = pytest.mark.unit

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-07", "2026-01-08", "2026-01-10"]
ROWS = 200  # per day


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Six validated demo days over ten calendar days (no batch on the 4th-6th and the 9th)."""
    root = tmp_path_factory.mktemp("history")
    params = repo_params(rows=ROWS)
    for day in DAYS:
        params.ingest.date = day
        ingest(params, root)
        validate(params, root)
    return root, params


def _window(params, window: str):
    return edit(params, {"train.window": window})


@pytest.mark.parametrize(
    ("window", "dates"),
    [
        ("1 day", DAYS[5:]),
        ("2 days", DAYS[5:]),  # the 9th has no batch: one batch in two days
        ("3 days", DAYS[4:]),
        ("4 days", DAYS[3:]),
        ("6 days", DAYS[3:]),  # the 5th and 6th have none either
        ("8 days", DAYS[2:]),
        ("10 days", DAYS),
        ("1000 days", DAYS),  # larger than the history: all of it
        ("all", DAYS),
    ],
)
def test_a_days_window_takes_the_batches_of_the_last_n_calendar_days(history, window, dates):
    root, params = history
    params = _window(params, window)
    plan = window_plan(root, params)
    assert [day.isoformat() for day, _ in plan.files] == dates
    assert plan.rows == ROWS * len(dates) and plan.history_files == len(DAYS)
    frame = load_window(root, params, plan)
    assert len(frame) == plan.rows
    assert sorted(frame["event_time"].dt.date.astype(str).unique()) == dates
    assert list(frame.columns) == model_columns(params)  # projected: no id column
    assert plan.summary()["first_date"] == dates[0] and plan.summary()["last_date"] == dates[-1]


@pytest.mark.parametrize("rows", [1, 150, ROWS, 450, ROWS * len(DAYS), 5000])
def test_a_rows_window_takes_the_newest_rows(history, rows):
    root, params = history
    everything = load_window(root, _window(params, "all"))
    frame = load_window(root, _window(params, f"{rows} rows"))
    expected = min(rows, len(everything))
    assert len(frame) == expected
    newest = everything["event_time"].sort_values().tail(expected).tolist()
    assert sorted(frame["event_time"].tolist()) == newest


@pytest.mark.parametrize("window", ["4 days", "450 rows", "all"])
def test_the_holdout_is_the_newest_fraction_inside_the_window(history, window):
    root, params = history
    params = _window(params, window)
    data = read_split(root, params, Budget("test"))
    window_rows = data.plan.rows
    assert len(data.train) + len(data.holdout) == window_rows
    assert len(data.holdout) == round(window_rows * params.split.holdout_fraction)
    first = pd.Timestamp(data.plan.files[0][0])
    assert data.holdout["event_time"].min() >= data.train["event_time"].max() >= first
    newest = load_window(root, params)["event_time"].sort_values().tail(len(data.holdout))
    assert sorted(data.holdout["event_time"]) == newest.tolist()
    summary = data.summary("event_time")
    assert summary["holdout_from"] == str(data.holdout["event_time"].min())
    assert summary["holdout_rows"] == len(data.holdout) and summary["window"] == window


def test_batches_outside_the_window_are_never_opened(history, tmp_path):
    source, params = history
    root = tmp_path / "ws"
    shutil.copytree(source, root)
    folder = root / dataset_dir(params)
    for day in DAYS[:3]:  # outside a 4-day window: overwritten with bytes no reader accepts
        (folder / f"{day}.parquet").write_bytes(b"not parquet: must never be read")
    data = read_split(root, _window(params, "4 days"), Budget("test"))
    assert data.plan.rows == 3 * ROWS
    with pytest.raises(Exception, match="Parquet"):  # the same read over all of them fails
        read_split(root, _window(params, "all"), Budget("test"))


def test_the_window_reaches_mlflow_and_every_stage_summary(history, tmp_path, ml_env):
    source, params = history
    root = tmp_path / "ws"
    shutil.copytree(source, root)
    params = edit(params, {"train.window": "4 days", "register.model_name": "window-test"})
    try:
        trained = train(params, root)
        evaluated = evaluate(params, root)
        registered = register(params, root)
        run = mlflow.MlflowClient().get_run(trained["run_id"])
    finally:
        mlflow.set_tracking_uri(None)
    window = trained["window"]
    assert window["window"] == "4 days" and window["files"] == 3 and window["history_files"] == 6
    assert (window["first_date"], window["last_date"]) == ("2026-01-07", "2026-01-10")
    assert window["rows"] == 3 * ROWS
    assert trained["train_rows"] + trained["holdout_rows"] == window["rows"]
    assert evaluated["window"] == window == registered["window"]
    assert json.loads((root / TRAIN_RUN_FILE).read_text())["window"] == window
    assert json.loads((root / REGISTRATION_FILE).read_text())["window"] == window
    assert run.data.params["train.window"] == "4 days"
    assert run.data.params["window.first_date"] == "2026-01-07"
    assert run.data.params["window.holdout_to"] == window["holdout_to"]
    assert run.data.metrics["window_rows"] == 3 * ROWS and run.data.metrics["history_files"] == 6
