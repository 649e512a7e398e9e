"""The reference profile and PSI (pipelines/profile.py) on several datasets, numeric and
categorical features, nulls and unknown categories.

In-distribution traffic (an independent draw from the data the profile was built on) stays
below params.yaml's threshold on every feature; a shift in location, scale, category mix or null
rate puts the shifted feature above it and leaves the others below.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets

from pipelines import demo
from pipelines.common import PipelineError
from pipelines.config import load_params
from pipelines.profile import (
    NULL_BIN,
    OTHER_BIN,
    bin_counts,
    build_profile,
    drift,
    load_profile,
    metric_key,
    psi,
    save_profile,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
CFG = PARAMS.monitor
TRAFFIC_ROWS = 2000


def _demo():
    frame = demo.generate(dt.date(2026, 3, 1), seed=3, rows=4000)
    return frame, PARAMS.schema.numeric_features, PARAMS.schema.categorical_features


def _sklearn(loader):
    def load():
        data = loader(as_frame=True).frame
        numeric = [c for c in data.columns if c != "target"]
        return data, numeric, []

    return load


def _mixed():
    """Skewed, discrete and constant numerics, categoricals with many levels, 10% nulls."""
    rng = np.random.default_rng(11)
    n = 5000
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1.2, n),
            "clicks": rng.poisson(2, n).astype(float),
            "flag": np.ones(n),
            "city": rng.choice(
                [f"city{i}" for i in range(80)],
                n,
                p=np.arange(80, 0, -1) / np.arange(80, 0, -1).sum(),
            ),
            "tier": rng.choice(["gold", "silver", "bronze"], n, p=[0.1, 0.3, 0.6]),
        }
    )
    for col in ("amount", "city"):
        frame.loc[rng.random(n) < 0.1, col] = None
    frame["city"] = frame["city"].astype(object)
    return frame, ["amount", "clicks", "flag"], ["city", "tier"]


DATASETS = {
    "demo": _demo,
    "iris": _sklearn(datasets.load_iris),
    "wine": _sklearn(datasets.load_wine),
    "breast_cancer": _sklearn(datasets.load_breast_cancer),
    "diabetes": _sklearn(datasets.load_diabetes),
    "mixed": _mixed,
}


def _traffic(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Served records drawn from the data's own distribution."""
    return frame.sample(TRAFFIC_ROWS, replace=True, random_state=seed).reset_index(drop=True)


def _observed(profile: dict, traffic: pd.DataFrame) -> dict[str, dict[str, int]]:
    return {
        name: dict(zip(spec["bins"], bin_counts(spec, traffic[name]), strict=True))
        for name, spec in profile["features"].items()
    }


@pytest.fixture(params=list(DATASETS), ids=list(DATASETS))
def dataset(request):
    return DATASETS[request.param]()


def test_in_distribution_traffic_is_below_the_threshold(dataset):
    frame, numeric, categorical = dataset
    profile = build_profile(frame, numeric, categorical, CFG)
    for seed in (1, 2, 3):
        scores = drift(profile, _observed(profile, _traffic(frame, seed)))
        assert set(scores) == set(numeric) | set(categorical)
        assert max(scores.values()) < CFG.psi_threshold, scores


def _shift_numeric(frame, column):
    frame = frame.copy()
    frame[column] = frame[column] + frame[column].std()
    return frame


def _scale_numeric(frame, column):
    frame = frame.copy()
    mean = frame[column].mean()
    frame[column] = mean + (frame[column] - mean) * 3
    return frame


def _nulls(frame, column):
    frame = frame.copy()
    frame.loc[frame.sample(frac=0.3, random_state=5).index, column] = None
    return frame


@pytest.mark.parametrize(
    "shift", [_shift_numeric, _scale_numeric, _nulls], ids=["location", "scale", "nulls"]
)
def test_a_shifted_numeric_feature_is_above_the_threshold_and_only_it(dataset, shift):
    frame, numeric, categorical = dataset
    column = next(c for c in numeric if frame[c].nunique() > 2)
    profile = build_profile(frame, numeric, categorical, CFG)
    scores = drift(profile, _observed(profile, shift(_traffic(frame, 7), column)))
    assert scores[column] > CFG.psi_threshold, scores
    assert all(v < CFG.psi_threshold for k, v in scores.items() if k != column), scores


def test_a_categorical_mix_change_and_unknown_categories_are_drift():
    frame, numeric, categorical = _demo()
    profile = build_profile(frame, numeric, categorical, CFG)
    traffic = _traffic(frame, 9)
    rare = traffic["contract"].value_counts().index[-1]
    mixed = traffic.assign(contract=rare)  # every record the rarest contract
    unseen = traffic.assign(region=np.where(np.arange(len(traffic)) % 2, "mars", traffic.region))
    assert drift(profile, _observed(profile, mixed))["contract"] > CFG.psi_threshold
    observed = _observed(profile, unseen)
    assert observed["region"][OTHER_BIN] == len(traffic) // 2
    scores = drift(profile, observed)
    assert scores["region"] > CFG.psi_threshold
    assert scores["contract"] < CFG.psi_threshold


def test_bins_count_nulls_unknowns_and_edges_exactly():
    frame = pd.DataFrame(
        {"x": [1.0, 2.0, 2.0, 3.0, 4.0, None], "c": ["a", "a", "b", None, "a", "b"]}
    )
    cfg = CFG.model_copy(update={"bins": 4, "max_categories": 1})
    profile = build_profile(frame, ["x"], ["c"], cfg)
    x, c = profile["features"]["x"], profile["features"]["c"]
    # min, the deduplicated quartiles (2, 2, 3), just above max
    assert x["edges"] == [1.0, 2.0, 3.0, np.nextafter(4.0, np.inf)]
    # bisect_right: a value equal to an edge goes to the bin above it; b0 and b4 lie outside
    # the training range
    assert dict(zip(x["bins"], x["counts"], strict=True)) == {
        "b0": 0,
        "b1": 1,
        "b2": 2,
        "b3": 2,
        "b4": 0,
        NULL_BIN: 1,
    }
    assert c["categories"] == ["a"]
    assert dict(zip(c["bins"], c["counts"], strict=True)) == {"c:a": 3, OTHER_BIN: 2, NULL_BIN: 1}
    assert bin_counts(c, ["a", "zzz", None, float("nan"), 1]) == [1, 2, 2]
    assert bin_counts(x, [None, -1e9, 2.0, 4.0, 1e9, float("nan")]) == [1, 0, 1, 1, 1, 2]
    assert profile["rows"] == 6


def test_constant_and_all_null_features_get_a_profile():
    frame = pd.DataFrame({"k": [5.0] * 50, "empty": [None] * 50, "c": [None] * 50})
    profile = build_profile(frame, ["k", "empty"], ["c"], CFG)
    assert profile["features"]["k"]["edges"] == [5.0, np.nextafter(5.0, np.inf)]
    assert profile["features"]["empty"]["bins"] == ["b0", NULL_BIN]
    assert profile["features"]["c"]["bins"] == [OTHER_BIN, NULL_BIN]
    same = _observed(profile, frame)
    assert max(drift(profile, same).values()) < 1e-9
    shifted = _observed(
        profile, pd.DataFrame({"k": [6.0] * 50, "empty": [1.0] * 50, "c": ["new"] * 50})
    )
    assert min(drift(profile, shifted).values()) > CFG.psi_threshold


def test_psi_matches_the_formula_and_its_properties():
    assert psi([10, 20, 30], [10, 20, 30]) == 0.0
    # proportions, not counts (up to the smoothing's pseudo-counts)
    assert psi([10, 20, 30], [20, 40, 60]) == pytest.approx(0.0, abs=1e-4)
    p = np.array([50.5, 50.5]) / 101
    q = np.array([90.5, 10.5]) / 101
    assert psi([50, 50], [90, 10]) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert psi([50, 50], [90, 10]) == pytest.approx(psi([90, 10], [50, 50]))  # symmetric
    assert math.isfinite(psi([100, 0], [0, 100]))  # empty bins: smoothed, not infinite
    for bad in (([1], [1]), ([1, 2], [1, 2, 3]), ([0, 0], [1, 1]), ([-1, 2], [1, 1])):
        with pytest.raises(ValueError):
            psi(*bad)


def test_drift_refuses_counts_made_under_other_bins():
    frame, numeric, categorical = _demo()
    profile = build_profile(frame, numeric, categorical, CFG)
    with pytest.raises(PipelineError, match="does not define"):
        drift(profile, {"age": {"b99": 5}})
    assert drift(profile, {}) == {}  # no traffic: no score, not a zero


def test_profile_round_trip_id_and_determinism(tmp_path):
    frame, numeric, categorical = _demo()
    profile = build_profile(frame, numeric, categorical, CFG)
    assert build_profile(frame, numeric, categorical, CFG) == profile
    assert load_profile(save_profile(profile, tmp_path)) == profile
    other = build_profile(frame, numeric, categorical, CFG.model_copy(update={"bins": 5}))
    assert other["id"] != profile["id"]
    tampered = {**profile, "features": {**profile["features"], "age": other["features"]["age"]}}
    (tmp_path / "bad.json").write_text(__import__("json").dumps(tampered))
    with pytest.raises(PipelineError, match="id does not match"):
        load_profile(tmp_path / "bad.json")
    with pytest.raises(PipelineError, match="missing"):
        build_profile(frame, ["nope"], [], CFG)


def test_metric_keys_are_valid_mlflow_names():
    assert metric_key("age") == "psi/age"
    assert metric_key("monthly charges (€)") == "psi/monthly charges ___"
