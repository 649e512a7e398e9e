"""Stage `monitor` against a local MLflow (SQLite) with a registered model whose reference profile
sits beside it, fed with traffic counted by the real aggregator (serving/traffic.py).

- in-distribution traffic: verdict ok, PSI per feature in the version's drift run, tags on the
  model version, a PNG plot;
- shifted traffic: verdict drift naming the shifted features; the history grows by one step per
  check in the same run, and the plot shows every check;
- too few records: no verdict; counts made under another profile, a model without a profile,
  no traffic source: exit 2 with one line naming the problem.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipelines import demo, monitor, tracking
from pipelines.common import MODEL_DIR
from pipelines.config import Params
from pipelines.ingest import ingest
from pipelines.profile import PROFILE_FILE, load_profile
from pipelines.register import register
from pipelines.train import train
from pipelines.validate import validate
from serving.traffic import TrafficAggregator
from tests.pipelines.conftest import edit, repo_params, write_params

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NAME = "drift-test"


def train_and_register(root: Path, params: Params) -> tuple[str, dict]:
    """What a retrain run leaves: the real ingest, validate, train and register stages on a demo
    day; the reference profile is the one train stored beside the model."""
    write_params(root / "params.yaml", params)
    ingest(params, root)
    validate(params, root)
    train(params, root)
    version = str(register(params, root)["version"])
    return version, load_profile(root / MODEL_DIR / PROFILE_FILE)


def register_without_profile(root: Path, name: str) -> str:
    """A version of a model logged before reference profiles existed."""
    import mlflow
    from sklearn.dummy import DummyClassifier

    tracking.configure(root, "drift-test-old")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(DummyClassifier().fit([[0], [1]], [0, 1]), name="model")
    return str(mlflow.register_model(info.model_uri, name).version)


def _snapshot(root: Path, profile: dict, version: str, frame, name="traffic.json") -> Path:
    agg = TrafficAggregator(profile, version, CollectorRegistry())
    agg.observe(json.loads(frame[list(profile["features"])].to_json(orient="records")))
    path = root / name
    path.write_text(json.dumps(agg.snapshot()))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One workspace and MLflow store for the module (creating a SQLite store costs seconds):
    version 1 of NAME trained by the train stage, version 1 of NAME-old without a profile."""
    root = tmp_path_factory.mktemp("monitor")
    params = edit(repo_params(rows=3000), {"register.model_name": NAME})
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MODEL_NAME", "CONVEYOR_IMAGE"):
            mp.delenv(name, raising=False)
        try:
            version, profile = train_and_register(root, params)
            register_without_profile(root, f"{NAME}-old")
        finally:
            import mlflow

            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)
        yield root, params, version, profile


def test_train_stores_the_profile_beside_the_model_and_in_the_registry(store, ml_env):
    import mlflow

    ml_root, params, version, profile = store
    assert set(profile["features"]) == set(params.schema.features)
    assert profile["rows"] > 0
    tracking.configure(ml_root)
    found = monitor.reference_profile(mlflow.MlflowClient(), NAME, version)
    assert found == profile


def _run(root, params, monkeypatch, traffic: Path) -> dict:
    monkeypatch.setenv("MONITOR_TRAFFIC_FILE", str(traffic))
    monkeypatch.delenv("PROMETHEUS_URL", raising=False)
    monkeypatch.delenv("PUSHGATEWAY_URL", raising=False)
    return monitor.monitor(params, root)


def _history(root, run_id, key):
    import mlflow

    tracking.configure(root)
    return mlflow.MlflowClient().get_metric_history(run_id, key)


def test_in_distribution_then_shifted_traffic(store, ml_env, monkeypatch):
    import mlflow

    ml_root, params, version, profile = store
    same = demo.generate(dt.date(2026, 3, 20), seed=9, rows=1500)
    summary = _run(ml_root, params, monkeypatch, _snapshot(ml_root, profile, version, same))
    assert summary["verdict"] == "ok", summary
    assert summary["drift_version"] is None
    [result] = summary["versions"]
    assert result["model_version"] == version and result["samples"] == 1500
    assert set(result["psi"]) == set(profile["features"])
    assert max(result["psi"].values()) < params.monitor.psi_threshold
    client = mlflow.MlflowClient()
    tags = client.get_model_version(NAME, version).tags
    assert tags["drift.verdict"] == "ok" and tags["drift.mlflow_run_id"] == result["mlflow_run_id"]
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["conveyor.drift.model_version"] == version
    assert set(run.data.metrics) >= {"psi/age", "psi/region", "psi_max", "samples"}
    plot = Path(result["plot"])
    assert plot.parent == ml_root / "reports" / "drift"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    shifted = demo.generate(dt.date(2026, 3, 21), seed=10, rows=1500)
    shifted["monthly_charges"] = shifted["monthly_charges"] * 2
    shifted["contract"] = "two_year"
    summary = _run(
        ml_root, params, monkeypatch, _snapshot(ml_root, profile, version, shifted, "shifted.json")
    )
    assert summary["verdict"] == "drift", summary
    assert summary["drift_version"] == version
    assert "monthly_charges" in summary["reason"] and "contract" in summary["reason"]
    assert f"{NAME} v{version}" in summary["reason"]
    [again] = summary["versions"]
    assert again["mlflow_run_id"] == result["mlflow_run_id"]  # one run per model version
    assert len(_history(ml_root, again["mlflow_run_id"], "psi/monthly_charges")) == 2
    assert client.get_model_version(NAME, version).tags["drift.verdict"] == "drift"
    artifacts = [a.path for a in client.list_artifacts(again["mlflow_run_id"])]
    assert f"{NAME}-v{version}.png" in artifacts


def test_too_few_records_give_no_verdict(store, ml_env, monkeypatch):
    ml_root, params, version, profile = store
    few = demo.generate(dt.date(2026, 3, 20), seed=9, rows=50)
    summary = _run(ml_root, params, monkeypatch, _snapshot(ml_root, profile, version, few))
    assert summary["verdict"] == "no_traffic"
    assert summary["skipped"] == [{"model_version": version, "samples": 50.0}]
    assert summary["versions"] == []


def _cli(root: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    import os

    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PROMETHEUS_URL", "PUSHGATEWAY_URL", "MONITOR_TRAFFIC_FILE")
    }
    return subprocess.run(
        [sys.executable, "-m", "pipelines.monitor", "--params", str(root / "params.yaml"), *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_command_prints_its_summary_last(store, ml_env):
    ml_root, params, version, profile = store
    traffic = _snapshot(
        ml_root, profile, version, demo.generate(dt.date(2026, 3, 20), seed=9, rows=400)
    )
    proc = _cli(ml_root, {"MONITOR_TRAFFIC_FILE": str(traffic)}, "--window", "15m")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["stage"] == "monitor" and summary["verdict"] == "ok"
    assert summary["window"] == "15m"  # the option over params.yaml's monitor.window


def test_since_checks_the_span_up_to_the_check(store, ml_env):
    ml_root, params, version, profile = store
    traffic = _snapshot(
        ml_root, profile, version, demo.generate(dt.date(2026, 3, 20), seed=9, rows=400)
    )
    ten_minutes_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    proc = _cli(
        ml_root, {"MONITOR_TRAFFIC_FILE": str(traffic)}, "--since", ten_minutes_ago.isoformat()
    )
    assert proc.returncode == 0, proc.stderr
    window = json.loads(proc.stdout.strip().splitlines()[-1])["window"]
    assert window.endswith("s") and 600 <= int(window[:-1]) <= 900, window


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "15 minutes"], "'15 minutes' is not a span such as 90s, 15m or 1h"),
        (["--since", "yesterday"], "'yesterday' is not an ISO 8601 time"),
        (
            ["--since", "2999-01-01T00:00:00Z"],
            "--since 2999-01-01T00:00:00+00:00 is not in the past",
        ),
        (["--window", "1h", "--since", "2026-01-01"], "not allowed with argument"),
    ],
)
def test_a_bad_span_is_one_line_and_exit_2(store, ml_env, args, message):
    ml_root, *_ = store
    proc = _cli(ml_root, {"MONITOR_TRAFFIC_FILE": "unused"}, *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("case", ["no_source", "other_profile", "no_profile", "bad_file"])
def test_mistakes_exit_2_with_one_line(store, ml_env, tmp_path, monkeypatch, capsys, case):
    ml_root, params, version, profile = store
    frame = demo.generate(dt.date(2026, 3, 1), seed=2, rows=300)
    snapshot = _snapshot(tmp_path, profile, version, frame)
    env = {"MONITOR_TRAFFIC_FILE": str(snapshot)}
    root = ml_root
    if case == "no_source":
        env = {}
    elif case == "other_profile":
        snap = json.loads(snapshot.read_text())
        snap["profile"] = "0123456789ab"
        snapshot.write_text(json.dumps(snap))
    elif case == "no_profile":  # the same store, the model registered without a profile
        write_params(tmp_path / "params.yaml", edit(params, {"register.model_name": f"{NAME}-old"}))
        env["MLFLOW_TRACKING_URI"] = tracking.tracking_uri(ml_root)
        root = tmp_path
    elif case == "bad_file":
        snapshot.write_text("{not json")
    expected = {
        "no_source": "set exactly one of PROMETHEUS_URL",
        "other_profile": "traffic was counted under profile",
        "no_profile": "has no reference_profile.json",
        "bad_file": "traffic snapshot",
    }[case]
    for name in ("PROMETHEUS_URL", "PUSHGATEWAY_URL", "MONITOR_TRAFFIC_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = monitor.main(["--params", str(root / "params.yaml")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("monitor: error: ") and expected in err, err
    assert err.count("\n") == 1
