"""The demo source: deterministic, realistic, drifting."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from pipelines import demo

pytestmark = pytest.mark.unit

DAY = dt.date(2026, 1, 1)


def test_same_date_and_seed_give_the_same_batch():
    pd.testing.assert_frame_equal(
        demo.generate(DAY, seed=7, rows=500), demo.generate(DAY, seed=7, rows=500)
    )


def test_other_seed_or_date_gives_another_batch():
    base = demo.generate(DAY, seed=7, rows=500)
    assert not base.equals(demo.generate(DAY, seed=8, rows=500))
    other_day = demo.generate(DAY + dt.timedelta(days=1), seed=7, rows=500)
    assert not base["monthly_charges"].equals(other_day["monthly_charges"])
    assert set(base["customer_id"]).isdisjoint(other_day["customer_id"])


def test_batch_matches_the_default_schema(ml_params):
    batch = demo.generate(DAY, rows=2000)
    expected = set(ml_params.schema.stored_columns)
    assert set(batch.columns) == expected
    assert batch["customer_id"].is_unique
    assert (batch["event_time"].dt.date == DAY).all()
    assert batch.isna().any().sum() >= 2  # missing values in several columns
    assert 0.1 < batch["churned"].mean() < 0.35  # imbalanced, both classes present


def test_gradual_drift_over_dates():
    early = demo.generate(DAY, rows=4000)
    late = demo.generate(DAY + dt.timedelta(days=365), rows=4000)
    assert late["monthly_charges"].mean() > early["monthly_charges"].mean() + 5
    assert late["churned"].mean() > early["churned"].mean() + 0.05
    fiber = [(b["internet_service"] == "fiber").mean() for b in (early, late)]
    assert fiber[1] > fiber[0]
