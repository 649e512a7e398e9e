"""Validate: every rule quarantines a bad batch with a machine-readable report, exit code 3."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines import demo
from pipelines.common import DATASET_DIR, LANDING_DIR, QUARANTINE_DIR, VALIDATION_FILE, Quarantined
from pipelines.data import SCHEMA_FILE, dataset_dir, load_window
from pipelines.ingest import ingest
from pipelines.validate import check_batch, validate
from pipelines.validate import main as validate_main
from tests.pipelines.conftest import edit

pytestmark = pytest.mark.unit


def _land(root, params, mutate=None):
    ingest(params, root)
    if mutate is not None:
        path = root / LANDING_DIR / "batch.parquet"
        batch = pd.read_parquet(path)
        mutate(batch).to_parquet(path, index=False)


def _set(col, values):
    def mutate(df):
        df[col] = values(df) if callable(values) else values
        return df

    return mutate


# (name, mutation of a good batch, expected failing (column, check))
RULES = [
    ("missing target", lambda df: df.drop(columns=["churned"]), ("churned", "column_in_dataframe")),
    ("missing feature", lambda df: df.drop(columns=["region"]), ("region", "column_in_dataframe")),
    (
        "several missing columns",
        lambda df: df.drop(columns=["age", "region", "churned"]),
        ("churned", "column_in_dataframe"),
    ),
    (
        "text in a numeric column",
        _set("age", lambda df: df["age"].astype(str).where(df.index % 50 != 0, "old")),
        ("age", "coerce_dtype('float64')"),
    ),
    (
        "out of range",
        _set("tenure_months", lambda df: df["tenure_months"].where(df.index > 5, -3)),
        ("tenure_months", "in_range(0.0, 120.0)"),
    ),
    (
        "null rate",
        _set("monthly_charges", lambda df: df["monthly_charges"].where(df.index % 3 != 0, np.nan)),
        ("monthly_charges", "max_null_fraction"),
    ),
    (
        "missing labels",
        _set("churned", lambda df: df["churned"].where(df.index != 7, np.nan)),
        ("churned", "not_nullable"),
    ),
    ("single class", _set("churned", 0), ("churned", "min_classes")),
    (
        "duplicate ids",
        _set(
            "customer_id", lambda df: df["customer_id"].where(df.index != 1, df["customer_id"][0])
        ),
        ("customer_id", "field_uniqueness"),
    ),
    ("too few rows", lambda df: df.head(20), (None, "min_rows")),
    (
        "missing date",
        _set("event_time", lambda df: df["event_time"].where(df.index != 3)),
        ("event_time", "not_nullable"),
    ),
    (
        "text that is no date",
        _set(
            "event_time",
            lambda df: df["event_time"].astype(str).where(df.index != 4, "the day after"),
        ),
        ("event_time", "parse_datetime"),
    ),
    (
        "a number that is no year",
        _set("event_time", lambda df: (df.index + 1) * 100_000),
        ("event_time", "parse_datetime"),
    ),
]


def test_a_good_batch_passes(ml_root, ml_params):
    _land(ml_root, ml_params)
    summary = validate(ml_params, ml_root)
    assert summary["status"] == "passed"
    stored = pd.read_parquet(ml_root / dataset_dir(ml_params) / "2026-01-01.parquet")
    assert list(stored.columns) == ml_params.schema.stored_columns
    assert stored["event_time"].dtype == "datetime64[us]"
    assert json.loads((ml_root / VALIDATION_FILE).read_text())["unknown_columns"] == []
    assert not (ml_root / QUARANTINE_DIR).exists()


@pytest.mark.parametrize(("name", "mutate", "expected"), RULES, ids=[r[0] for r in RULES])
def test_each_rule_quarantines_the_batch(ml_root, ml_params, name, mutate, expected):
    _land(ml_root, ml_params, mutate)
    landed = pd.read_parquet(ml_root / LANDING_DIR / "batch.parquet")
    with pytest.raises(Quarantined, match="2026-01-01 failed"):
        validate(ml_params, ml_root)

    where = ml_root / QUARANTINE_DIR / "2026-01-01"
    report = json.loads((where / "report.json").read_text())
    assert report["status"] == "quarantined" and report["rows"] == len(landed)
    failed = {(f["column"], f["check"]) for f in report["failures"]}
    assert expected in failed, failed
    if name == "several missing columns":
        assert {c for c, check in failed if check == "column_in_dataframe"} == {
            "age",
            "region",
            "churned",
        }
    assert all(f["failed_count"] >= 1 for f in report["failures"])
    pd.testing.assert_frame_equal(pd.read_parquet(where / "batch.parquet"), landed)
    assert not (ml_root / LANDING_DIR / "batch.parquet").exists()  # moved, never promoted
    assert not (ml_root / DATASET_DIR).exists()


def test_null_rate_report_carries_the_observed_fraction(ml_params):
    from pipelines import demo

    batch = demo.generate(pd.Timestamp("2026-01-01").date(), rows=300)
    batch.loc[batch.index % 2 == 0, "region"] = None
    _, failures = check_batch(batch, ml_params)
    (entry,) = [f for f in failures if f["column"] == "region"]
    assert entry["check"] == "max_null_fraction" and entry["observed"] == 0.5


def test_quarantine_leaves_the_dataset_untouched_and_exits_3(ml_root, ml_params, capsys):
    _land(ml_root, ml_params)
    validate(ml_params, ml_root)
    good = (ml_root / dataset_dir(ml_params) / "2026-01-01.parquet").read_bytes()

    _land(ml_root, ml_params, lambda df: df.drop(columns=["churned"]))
    assert validate_main(["--params", str(ml_root / "params.yaml")]) == 3
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1
    assert "validate: quarantined:" in err and "target column 'churned' missing" in err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "quarantined"
    assert (ml_root / dataset_dir(ml_params) / "2026-01-01.parquet").read_bytes() == good


def test_validate_without_a_landed_batch_is_bad_input(ml_root, capsys):
    assert validate_main(["--params", str(ml_root / "params.yaml")]) == 2
    assert "run ingest first" in capsys.readouterr().err


def test_unknown_columns_are_reported_and_not_stored_dropped_ones_are_not_unknown(
    ml_root, ml_params
):
    ml_params.schema.drop_columns = ["notes"]
    _land(ml_root, ml_params, lambda df: df.assign(**{"notes": "x", "Plan (old)": 1}))
    summary = validate(ml_params, ml_root)
    assert summary["unknown_columns"] == ["Plan (old)"]
    report = json.loads((ml_root / VALIDATION_FILE).read_text())
    assert report["status"] == "passed" and report["unknown_columns"] == ["Plan (old)"]
    assert report["dropped_columns"] == ["notes"]
    stored = pd.read_parquet(ml_root / dataset_dir(ml_params) / "2026-01-01.parquet")
    assert "Plan (old)" not in stored and "notes" not in stored


def test_integer_years_are_dates(ml_root, ml_params):
    _land(ml_root, ml_params, _set("event_time", lambda df: 2000 + df.index % 20))
    validate(ml_params, ml_root)
    stored = pd.read_parquet(ml_root / dataset_dir(ml_params) / "2026-01-01.parquet")
    assert stored["event_time"].min() == pd.Timestamp("2000-01-01")
    assert stored["event_time"].max() == pd.Timestamp("2019-01-01")


def test_categories_are_text_whatever_the_file_made_of_them(ml_params):
    batch = demo.generate(pd.Timestamp("2026-01-01").date(), rows=300)
    batch["region"] = [3.0] * 100 + [None] * 20 + [12] * 100 + ["north"] * 80
    stored, failures = check_batch(batch, ml_params)
    assert failures == []
    assert stored["region"].dropna().unique().tolist() == ["3", "12", "north"]
    assert stored["region"].isna().sum() == 20


def test_a_new_schema_gets_a_new_dataset_folder_and_never_mixes_rows(ml_root, ml_params):
    _land(ml_root, ml_params)
    validate(ml_params, ml_root)
    first = dataset_dir(ml_params)

    ml_params = edit(
        ml_params,
        {"schema.categorical_features": ["contract", "region"], "ingest.date": "2026-01-02"},
    )  # another schema
    _land(ml_root, ml_params, lambda df: df.drop(columns=["payment_method", "internet_service"]))
    validate(ml_params, ml_root)
    second = dataset_dir(ml_params)
    assert second != first
    assert sorted(p.name for p in (ml_root / first).iterdir()) == [
        "2026-01-01.parquet",
        SCHEMA_FILE,
    ]
    assert sorted(p.name for p in (ml_root / second).iterdir()) == [
        "2026-01-02.parquet",
        SCHEMA_FILE,
    ]
    data = load_window(ml_root, ml_params)
    assert len(data) == 600 and "payment_method" not in data
    assert (data["event_time"].dt.date == pd.Timestamp("2026-01-02").date()).all()


def test_a_batch_whose_column_kinds_differ_from_its_folder_is_quarantined(ml_root, ml_params):
    _land(ml_root, ml_params)
    validate(ml_params, ml_root)
    ml_params.ingest.date = "2026-01-02"
    _land(ml_root, ml_params, _set("churned", lambda df: df["churned"].map({0: "no", 1: "yes"})))
    with pytest.raises(Quarantined, match=r"dataset_schema\(churned\)"):
        validate(ml_params, ml_root)
    report = json.loads((ml_root / QUARANTINE_DIR / "2026-01-02" / "report.json").read_text())
    (entry,) = report["failures"]
    assert (entry["expected"], entry["observed"]) == ("number", "text")
    assert len(load_window(ml_root, ml_params)) == 600  # only the first day


def test_a_regression_target_must_be_numeric(ml_root, ml_params):
    ml_params = edit(
        ml_params,
        {
            "schema.task": "regression",
            "schema.target": "monthly_charges",
            "schema.numeric_features": ["tenure_months", "age"],
            "validation.ranges": {},
        },
    )
    _land(
        ml_root,
        ml_params,
        _set(
            "monthly_charges",
            lambda df: df["monthly_charges"].astype(str).where(df.index != 9, "lots"),
        ),
    )
    with pytest.raises(Quarantined, match=r"coerce_dtype\('float64'\)\(monthly_charges\)"):
        validate(ml_params, ml_root)
