"""serving/traffic.py: served records counted in the reference profile's bins.

- the counts equal the training side's binning (pipelines/profile.bin_counts) exactly, for one
  record per request and for batches, nulls, unknown categories and wrong kinds included;
- memory stays bounded: a long stream of never-seen categories and values adds no series and
  no memory;
- the counters are Prometheus series from the start (at 0), summed across worker processes in
  multiprocess mode, and a model reload in the same process gets its own series;
- the monitor's drift() on a snapshot: in-distribution below the threshold, shifted above.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pipelines import demo
from pipelines.config import load_params
from pipelines.profile import bin_counts, build_profile, drift, save_profile
from serving.traffic import TrafficAggregator

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
NUMERIC, CATEGORICAL = PARAMS.schema.numeric_features, PARAMS.schema.categorical_features
CFG = PARAMS.monitor


def _records(frame) -> list[dict]:
    """Request records as the server parses them: JSON values, null for missing."""
    return json.loads(frame[NUMERIC + CATEGORICAL].to_json(orient="records"))


@pytest.fixture(scope="module")
def training():
    return demo.generate(dt.date(2026, 3, 1), seed=4, rows=3000)


@pytest.fixture(scope="module")
def profile(training):
    return build_profile(training, NUMERIC, CATEGORICAL, CFG)


def _aggregator(profile, version="1"):
    registry = CollectorRegistry()
    return TrafficAggregator(profile, version, registry), registry


def test_counts_equal_the_training_side_binning(profile):
    traffic = demo.generate(dt.date(2026, 3, 9), seed=8, rows=700)
    traffic.loc[::7, "age"] = None
    traffic.loc[::5, "region"] = "atlantis"  # unknown category
    traffic.loc[::11, "contract"] = None
    records = _records(traffic)
    records[3]["support_calls"] = "three"  # wrong kind: counted as null, never a crash
    records[4].pop("tenure_months")  # missing: null
    agg, _ = _aggregator(profile)
    agg.observe(records[:1])  # one-record path
    agg.observe(records[1:400])  # batch path
    agg.observe(iter(records[400:450]))
    for i in range(450, len(records), 5):  # small batches: value by value
        agg.observe(records[i : i + 5])
    agg.observe([])
    snap = agg.snapshot()
    assert snap["records"] == len(records)
    assert snap["profile"] == profile["id"] and snap["model_version"] == "1"
    for name, spec in profile["features"].items():
        expected = dict(
            zip(spec["bins"], bin_counts(spec, [r.get(name) for r in records]), strict=True)
        )
        if name == "support_calls":  # bin_counts coerces text to null as well
            assert expected["null"] >= 1
        assert snap["features"][name] == {k: float(v) for k, v in expected.items()}, name
    assert snap["features"]["region"]["other"] == len(range(0, 700, 5))
    assert snap["features"]["tenure_months"]["null"] >= 1


def test_a_column_batch_counts_as_its_records(profile):
    """`observe_columns` (the server's validated Batch.columns) and `observe` (records) agree,
    on the one-record and the batch path; a column the batch lacks counts as null."""
    traffic = demo.generate(dt.date(2026, 3, 9), seed=9, rows=300)
    traffic.loc[::4, "region"] = "atlantis"
    traffic.loc[::6, "age"] = None
    records = _records(traffic)
    by_record, _ = _aggregator(profile)
    by_column, _ = _aggregator(profile)
    for chunk in (records[:1], records[1:]):
        by_record.observe(chunk)
        columns = {name: [r[name] for r in chunk] for name in NUMERIC + CATEGORICAL}
        by_column.observe_columns(columns, len(chunk))
    assert by_column.snapshot() == by_record.snapshot()
    without_age = {name: [r[name] for r in records] for name in NUMERIC if name != "age"}
    by_column.observe_columns(without_age, len(records))
    snap = by_column.snapshot()
    assert snap["records"] == 2 * len(records)
    assert snap["features"]["age"]["null"] == len(range(0, 300, 6)) + len(records)
    assert sum(snap["features"]["region"].values()) == 2 * len(records)  # all null the 2nd time


def test_every_series_exists_from_the_start(profile):
    agg, registry = _aggregator(profile, "7")
    text = generate_latest(registry).decode()
    n_bins = sum(len(spec["bins"]) for spec in profile["features"].values())
    lines = [
        line for line in text.splitlines() if line.startswith("conveyor_feature_values_total{")
    ]
    assert len(lines) == n_bins
    assert all(line.endswith(" 0.0") for line in lines)
    assert f'bin="other",feature="region",model_version="7",profile="{profile["id"]}"}} 0.0' in text
    assert (
        f'conveyor_traffic_records_total{{model_version="7",profile="{profile["id"]}"}} 0.0' in text
    )


def test_memory_stays_bounded_whatever_the_traffic(profile):
    agg, registry = _aggregator(profile)
    rng = np.random.default_rng(0)

    def batch(i):
        return [
            {
                **{
                    n: float(v)
                    for n, v in zip(NUMERIC, rng.normal(0, 1e6, len(NUMERIC)), strict=True)
                },
                **{c: f"never-seen-{i}-{j}-{c}" for c in CATEGORICAL},
            }
            for j in range(50)
        ]

    series_before = len(list(registry.collect())[0].samples)
    for i in range(20):  # warm up allocator caches
        agg.observe(batch(i))
    tracemalloc.start()
    start, _ = tracemalloc.get_traced_memory()
    for i in range(20, 620):  # 30,000 records, every category new
        agg.observe(batch(i))
    end, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(list(registry.collect())[0].samples) == series_before
    assert end - start < 64 * 1024, f"grew by {end - start} bytes over 30,000 records"
    assert agg.snapshot()["features"]["region"]["other"] == 31_000


def test_a_reload_in_the_same_process_gets_its_own_series(profile, training):
    registry = CollectorRegistry()
    first = TrafficAggregator(profile, "1", registry)
    other_profile = build_profile(
        training, NUMERIC, CATEGORICAL, CFG.model_copy(update={"bins": 4})
    )
    second = TrafficAggregator(other_profile, "2", registry)
    first.observe(_records(training.head(3)))
    second.observe(_records(training.head(5)))
    assert (first.snapshot()["records"], second.snapshot()["records"]) == (3, 5)
    assert set(second.snapshot()["features"]["age"]) == set(
        other_profile["features"]["age"]["bins"]
    )


def test_from_model_dir(tmp_path, profile):
    assert TrafficAggregator.from_model_dir(tmp_path, "1", CollectorRegistry()) is None
    save_profile(profile, tmp_path)
    agg = TrafficAggregator.from_model_dir(tmp_path, "1", CollectorRegistry())
    assert agg is not None and agg.profile_id == profile["id"]
    with pytest.raises(ValueError, match="format"):
        TrafficAggregator({"format": 99}, "1", CollectorRegistry())
    broken = json.loads(json.dumps(profile))
    broken["features"]["age"]["bins"].pop()
    with pytest.raises(ValueError, match="'age' has inconsistent bins"):
        TrafficAggregator(broken, "1", CollectorRegistry())


WORKER = textwrap.dedent("""
    import json, sys
    from prometheus_client import CollectorRegistry
    from serving.traffic import TrafficAggregator
    profile = json.load(open(sys.argv[1]))
    records = json.load(open(sys.argv[2]))
    TrafficAggregator(profile, "3", CollectorRegistry()).observe(records)
""")
COLLECT = textwrap.dedent("""
    import sys
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=sys.argv[1])
    sys.stdout.write(generate_latest(registry).decode())
""")


def test_worker_processes_sum_in_multiprocess_mode(tmp_path, profile, training):
    """As under the pre-fork server: each worker counts its own requests, /metrics sums them."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    profile_file = save_profile(profile, tmp_path)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "PYTHONPATH": str(REPO)}
    for i, rows in enumerate((training.iloc[:120], training.iloc[120:300])):
        (tmp_path / f"r{i}.json").write_text(json.dumps(_records(rows)))
        subprocess.run(
            [sys.executable, "-c", WORKER, profile_file, tmp_path / f"r{i}.json"],
            env=env,
            check=True,
            timeout=60,
        )
    out = subprocess.run(
        [sys.executable, "-c", COLLECT, metrics_dir],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    assert (
        f'conveyor_traffic_records_total{{model_version="3",profile="{profile["id"]}"}} 300.0'
        in out
    )
    region = bin_counts(profile["features"]["region"], training["region"].iloc[:300])
    north = profile["features"]["region"]["bins"].index("c:north")
    assert (
        f'bin="c:north",feature="region",model_version="3",profile="{profile["id"]}"}} '
        f"{float(region[north])}"
    ) in out


def test_drift_on_a_snapshot(profile):
    same, _ = _aggregator(profile)
    same.observe(_records(demo.generate(dt.date(2026, 4, 1), seed=21, rows=1500)))
    scores = drift(profile, same.snapshot()["features"])
    assert max(scores.values()) < CFG.psi_threshold, scores

    shifted_frame = demo.generate(dt.date(2026, 4, 1), seed=21, rows=1500)
    shifted_frame["monthly_charges"] *= 1.8
    shifted_frame["contract"] = "two_year"
    shifted, _ = _aggregator(profile)
    shifted.observe(_records(shifted_frame))
    scores = drift(profile, shifted.snapshot()["features"])
    assert {k for k, v in scores.items() if v > CFG.psi_threshold} >= {
        "monthly_charges",
        "contract",
    }
