"""The built-in `demo` source: a daily batch of a churn-like tabular classification problem.

A batch is a pure function of (date, seed, rows): the same arguments give the same frame. A large
batch is made in parts (`batch_parts`), each from its own seed, so it never has to be held whole.
It has named numeric and categorical features, missing values, class imbalance (15-30 %
churners, rising) and gradual drift over dates: charges, support calls and the fibre share
rise, month-to-month contracts fall and the weight of price in churn grows, so that scheduled
retraining matters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pandas as pd

EPOCH = dt.date(2026, 1, 1)  # drift is measured in years from this date

CONTRACTS = ["month_to_month", "one_year", "two_year"]
PAYMENTS = ["electronic_check", "credit_card", "bank_transfer", "mailed_check"]
INTERNET = ["fiber", "dsl", "none"]
REGIONS = ["north", "south", "east", "west"]


def _probs(weights: list[float]) -> np.ndarray:
    w = np.clip(np.asarray(weights, dtype=float), 0.01, None)
    return w / w.sum()


def generate(
    date: dt.date, seed: int = 42, rows: int = 3000, part: int = 0, first_id: int = 0
) -> pd.DataFrame:
    """Return the demo batch of `date` (deterministic in date, seed and rows); `part` > 0 is
    another part of the same day's batch, its ids counted from `first_id`."""
    if rows <= 0:
        return pd.DataFrame()
    rng = np.random.default_rng([int(seed), date.toordinal(), *([part] if part else [])])
    t = (date - EPOCH).days / 365.0  # years since EPOCH: the drift clock

    contract = rng.choice(CONTRACTS, size=rows, p=_probs([0.55 - 0.1 * t, 0.25, 0.20 + 0.1 * t]))
    payment = rng.choice(PAYMENTS, size=rows, p=_probs([0.35, 0.25, 0.25, 0.15]))
    internet = rng.choice(INTERNET, size=rows, p=_probs([0.45 + 0.15 * t, 0.35, 0.20 - 0.15 * t]))
    region = rng.choice(REGIONS, size=rows, p=_probs([0.3, 0.25, 0.25, 0.2]))

    tenure = np.clip(rng.gamma(2.0, 12.0, rows), 0, 72).round()
    monthly = np.clip(rng.normal(65 + 12 * t + 15 * (internet == "fiber"), 20, rows), 18, 180)
    total = tenure * monthly * rng.uniform(0.9, 1.1, rows)
    support = rng.poisson(1.2 + 0.6 * t + 0.8 * (internet == "fiber"), rows).astype(float)
    usage = rng.lognormal(3.0 + 0.2 * t, 0.6, rows)
    age = np.clip(rng.normal(45, 15, rows), 18, 90).round()
    late = rng.poisson(0.5, rows).astype(float)

    price_weight = 0.03 * (1 + 0.8 * t)
    logit = (
        -2.7
        + 1.3 * (contract == "month_to_month")
        - 0.9 * (contract == "two_year")
        + price_weight * (monthly - 70)
        - 0.04 * tenure
        + 0.35 * support
        + 0.4 * late
        + 0.35 * (payment == "electronic_check")
        - 0.01 * (age - 45)
        + rng.normal(0, 0.5, rows)
    )
    churned = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)

    # Missing values, as real exports have them.
    total = np.where((tenure == 0) | (rng.random(rows) < 0.03), np.nan, total)
    usage = np.where(rng.random(rows) < 0.08, np.nan, usage)
    payment = np.where(rng.random(rows) < 0.02, None, payment)

    seconds = np.sort(rng.uniform(0, 86400, rows))
    event_time = pd.Timestamp(date) + pd.to_timedelta(seconds.round(), unit="s")
    return pd.DataFrame(
        {
            "customer_id": [f"C{date:%Y%m%d}-{i:05d}" for i in range(first_id, first_id + rows)],
            "event_time": event_time.astype("datetime64[ns]"),
            "tenure_months": tenure,
            "monthly_charges": monthly.round(2),
            "total_charges": np.round(total, 2),
            "support_calls": support,
            "data_usage_gb": np.round(usage, 3),
            "age": age,
            "late_payments": late,
            "contract": contract.astype(object),
            "payment_method": payment.astype(object),
            "internet_service": internet.astype(object),
            "region": region.astype(object),
            "churned": churned,
        }
    )


def batch_parts(date: dt.date, seed: int, rows: int, part_rows: int) -> Iterator[pd.DataFrame]:
    """The demo batch of `date` in parts of `part_rows` (one part: exactly `generate`'s batch)."""
    for part, start in enumerate(range(0, rows, part_rows)):
        yield generate(date, seed, min(part_rows, rows - start), part=part, first_id=start)
