"""Cost of counting served records into the reference profile's bins (serving/traffic.py), per
request, beside two peers:

  naive      `counter.labels(...).inc()` for every value (what a first version would do)
  pandas     pipelines.profile.bin_counts on the request's columns (the training side's way)
  traffic    TrafficAggregator.observe (pre-created children, one inc per touched bin)

for 1, 10, 100 and 1000 records per request, with prometheus_client in single-process mode and
in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, as the pre-fork server runs it). Prints a table
of microseconds per request (median of several runs).

    .venv/bin/python benchmarks/traffic/bench.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIZES = (1, 10, 100, 1000)

CHILD = r"""
import datetime as dt, json, statistics, sys, time
from prometheus_client import CollectorRegistry, Counter
sys.path.insert(0, sys.argv[1])
from pipelines import demo
from pipelines.config import load_params
from pipelines.profile import bin_counts, build_profile
from serving.traffic import TrafficAggregator

params = load_params(f"{sys.argv[1]}/params.yaml")
numeric = params.schema.numeric_features
categorical = params.schema.categorical_features
frame = demo.generate(dt.date(2026, 3, 1), seed=1, rows=4000)
profile = build_profile(frame, numeric, categorical, params.monitor)
records = json.loads(frame[numeric + categorical].to_json(orient="records"))
agg = TrafficAggregator(profile, "1", CollectorRegistry())
naive_counter = Counter("naive_values_total", "", ["feature", "bin"], registry=CollectorRegistry())
feats = agg.features

def naive(batch):
    for f in feats:
        for r in batch:
            naive_counter.labels(f.name, f.labels[f.bin_of(r.get(f.name))]).inc()

def pandas_way(batch):
    for name, spec in profile["features"].items():
        bin_counts(spec, [r.get(name) for r in batch])

out = {}
for size in json.loads(sys.argv[2]):
    batch = records[:size]
    for label, fn in (("naive", naive), ("pandas", pandas_way), ("traffic", agg.observe)):
        runs = []
        for _ in range(5):  # each run: as many requests as fit in 0.2 s (at least 3)
            start, reps = time.perf_counter(), 0
            while reps < 3 or time.perf_counter() - start < 0.2:
                fn(batch)
                reps += 1
            runs.append((time.perf_counter() - start) / reps * 1e6)
        out[f"{label}|{size}"] = statistics.median(runs)
print(json.dumps(out))
"""


def measure(multiprocess: bool) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory() as tmp:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = tmp
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(ROOT), json.dumps(SIZES)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    results = {"single-process": measure(False), "multiprocess": measure(True)}
    print("µs per request (11 features; median of 5 runs)\n")
    header = f"| {'mode':<15} | {'records':>7} | {'naive':>10} | {'pandas':>10} | {'traffic':>10} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for mode, res in results.items():
        for size in SIZES:
            cells = [f"{res[f'{label}|{size}']:>10.1f}" for label in ("naive", "pandas", "traffic")]
            print(f"| {mode:<15} | {size:>7} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
