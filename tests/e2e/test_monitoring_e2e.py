"""Monitoring and data-aware retraining on the real stack (the suite's own: `test_stack`), driven
through the REST APIs only (Airflow's, Prometheus's, Alertmanager's, MLflow's, the gateway's)
and the Docker engine (to stop a serving container).

1. Prometheus scrapes MLflow, the Airflow exporter, the Pushgateway and Alertmanager;
2. drift (the server counts its traffic: serving/traffic.py): traffic drawn from the training
   distribution -> verdict ok, no event on the drift asset; shifted traffic -> PSI above the
   threshold, InputDrift fires, the drift history is in MLflow, and a retrain run starts whose
   trigger is `drift`, with the reason in its run note;

A batch landing in the landing bucket, and Prometheus following the serving containers across a
deploy, are checked with the deploys of tests/e2e/test_retrain_e2e.py; ServingDown reaching
Alertmanager, with the faults of tests/e2e/test_faults.py (the serving containers are stopped
during that run). Every wait is bounded;
the measured delays are printed at the end of the session.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.parse
import urllib.request

import pytest

from pipelines import demo
from tests.e2e.conftest import (
    ROOT,
    Runs,
    get_json,
    post_json,
    prometheus_targets,
    timestamp,
    wait_for,
)
from tests.helpers import measured
from tests.helpers.stack import TestStack

pytestmark = pytest.mark.e2e

RUN_START_TIMEOUT = 180  # asset event -> retrain run created (scheduler loops)
TARGET_TIMEOUT = 90  # Prometheus target up / gone (15 s SD refresh + scrape)


class Monitoring:
    """The stack's Prometheus, Alertmanager and DAG runs other than retrain's."""

    def __init__(self, stack: TestStack, runs: Runs):
        self.stack, self.runs, self.client = stack, runs, runs.client
        self.prometheus = stack.url("PROMETHEUS_PORT")
        self.scrape = int(stack.env["PROMETHEUS_SCRAPE_INTERVAL"].removesuffix("s"))  # seconds

    def query(self, promql: str) -> list[dict]:
        q = urllib.parse.urlencode({"query": promql})
        return get_json(f"{self.prometheus}/api/v1/query?{q}", timeout=10)["data"]["result"]

    def targets(self, job: str) -> dict[str, str]:
        return prometheus_targets(self.stack, job)

    def firing(self, alertname: str) -> list[dict]:
        alerts = get_json(f"{self.prometheus}/api/v1/alerts", timeout=10)["data"]["alerts"]
        return [
            a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"
        ]

    def asset_runs_since(self, since: float) -> list[dict]:
        """`retrain` runs an asset event started at or after `since` (Unix time)."""
        return [
            run
            for run in self.client.dag_runs("retrain", limit=50)
            if run.get("run_type") == "asset_triggered"
            and (timestamp(run.get("run_after") or run.get("queued_at")) or 0) >= since
        ]

    def asset_events_since(self, asset_name: str, since: float) -> list[dict]:
        """Events on the named asset at or after `since` (Unix time)."""
        assets = self.client.request("GET", "/api/v2/assets?limit=100")["assets"]
        (asset,) = [a for a in assets if a["name"] == asset_name]
        path = f"/api/v2/assets/events?asset_id={asset['id']}&limit=100"
        events = self.client.request("GET", path)["asset_events"]
        return [e for e in events if timestamp(e["timestamp"]) >= since]

    def run_dag(
        self, dag_id: str, name: str, logical_date: str | None = None, conf: dict | None = None
    ) -> dict:
        run_id = f"e2e-{self.runs.tag}-{name}"
        self.client.trigger(dag_id, logical_date, conf or {}, run_id=run_id)
        run = self.client.wait_run(dag_id, run_id, timeout=600, poll=3)
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        tasks = self.client.request("GET", f"{path}/taskInstances")["task_instances"]
        run["tasks"] = {t["task_id"]: t["state"] for t in tasks}
        run["path"] = path
        return run

    def check_drift(self, name: str, since: float) -> dict:
        """The monitor DAG on the traffic since `since` (Unix time): the served version also
        took the load of the other e2e modules' deploys, none of it this test's distribution."""
        # From one scrape before: `increase()` counts from the first sample in its range, so
        # the sample taken before the traffic must be in it.
        when = dt.datetime.fromtimestamp(since - self.scrape, dt.UTC).isoformat()
        run = self.run_dag("monitor", name, conf={"since": when})
        assert run["state"] == "success", run
        xcom = self.client.request(
            "GET", f"{run['path']}/taskInstances/check_drift/xcomEntries/return_value"
        )["value"]
        run["summary"] = xcom if isinstance(xcom, dict) else json.loads(xcom)
        return run

    def wait_retrain(self, run: dict) -> dict:
        done = self.runs.wait(run["dag_run_id"])
        done["trigger"] = self.runs.xcom(run["dag_run_id"], "resolve_trigger")
        done["note"] = self.client.dag_run("retrain", run["dag_run_id"]).get("note") or ""
        return done


@pytest.fixture(scope="module")
def monitoring(test_stack: TestStack, runs: Runs, data_aware_dags) -> Monitoring:
    return Monitoring(test_stack, runs)


def _features() -> list[str]:
    import yaml

    schema = yaml.safe_load((ROOT / "params.yaml").read_text())["schema"]
    return schema["numeric_features"] + schema["categorical_features"]


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def _send(url: str, frame, batch: int = 100) -> None:
    records = json.loads(frame[_features()].to_json(orient="records"))
    for i in range(0, len(records), batch):
        assert len(post_json(f"{url}/predict", records[i : i + batch], timeout=30)["predictions"])


def test_prometheus_scrapes_mlflow_airflow_and_its_own_parts(monitoring):
    jobs = ("mlflow", "airflow", "pushgateway", "alertmanager", "prometheus")

    def all_up():
        health = {job: monitoring.targets(job) for job in jobs}
        return health if all(h and set(h.values()) == {"up"} for h in health.values()) else None

    wait_for(all_up, TARGET_TIMEOUT, f"targets {jobs} up")
    # The exporter's read-only role reads Airflow's tables (it would export nothing otherwise).
    assert monitoring.query('airflow_dag_paused{dag_id="retrain"}'), "no airflow_dag metrics"
    # `mlflow server --expose-prometheus`: prometheus-flask-exporter's series, prefix mlflow_.
    assert monitoring.query('{job="mlflow", __name__=~"mlflow_.*"}'), "no mlflow_* series"


def test_drift_starts_a_retrain_only_when_the_inputs_shift(monitoring, served, request):
    stack, url = monitoring.stack, monitoring.stack.url("SERVING_PORT")
    version = served
    # Traffic like the served model's own training data: the demo data drifts with its date
    # (monthly charges climb over the months), so "the same distribution" is that of the date
    # the model was trained up to.
    mlflow = stack.mlflow()
    run_id = mlflow.get_model_version(stack.env["MODEL_NAME"], version).run_id
    day = dt.date.fromisoformat(mlflow.get_run(run_id).data.tags["conveyor.ingest_date"])
    same = demo.generate(day, seed=31, rows=600)
    series = f'conveyor_traffic_records_total{{job="serving", model_version="{version}"}}'
    counted = f"sum({series})"
    # `increase()` cannot count what a series held at its first scrape: the container's
    # series is in Prometheus (one record counted and scraped) before the traffic is sent.
    _send(url, same.head(1))
    metrics = get_text(f"{url}/metrics")
    if "conveyor_traffic_records_total" not in metrics:
        pytest.fail(
            "the serving container counts no traffic (no conveyor_traffic_records_total on its "
            "/metrics): serving/ does not call serving/traffic.py's TrafficAggregator yet (the "
            "hook: README, 'Monitoring'), or the served model has no reference_profile.json"
        )
    wait_for(lambda: monitoring.query(series), TARGET_TIMEOUT, f"{series} in Prometheus")
    before = sum(float(r["value"][1]) for r in monitoring.query(counted))  # earlier tests' load
    sent_from = time.time()
    _send(url, same)
    wait_for(
        lambda: [r for r in monitoring.query(counted) if float(r["value"][1]) >= before + 600],
        TARGET_TIMEOUT,
        "the served records in Prometheus",
    )
    since = time.time()
    quiet = monitoring.check_drift("drift-quiet", sent_from)
    assert quiet["summary"]["verdict"] == "ok", quiet["summary"]
    assert quiet["tasks"]["request_retrain"] == "skipped"
    # No event on the drift asset, so no retrain can follow (an event starts one).
    assert monitoring.asset_events_since("conveyor-input-drift", since) == []

    shifted = demo.generate(day, seed=32, rows=4000)
    shifted["monthly_charges"] = shifted["monthly_charges"] * 2.5
    shifted["contract"] = "two_year"
    _send(url, shifted)
    wait_for(
        lambda: [r for r in monitoring.query(counted) if float(r["value"][1]) >= before + 4600],
        TARGET_TIMEOUT,
        "the shifted records in Prometheus",
    )
    since = time.time()
    loud = monitoring.check_drift("drift-loud", sent_from)
    summary = loud["summary"]
    assert summary["verdict"] == "drift" and summary["drift_version"] == version, summary
    assert loud["tasks"]["request_retrain"] == "success"
    [result] = [r for r in summary["versions"] if r["model_version"] == version]
    assert result["psi"]["monthly_charges"] > summary["threshold"]
    assert result["psi"]["contract"] > summary["threshold"]
    firing = wait_for(lambda: monitoring.firing("InputDrift"), 60, "InputDrift firing")
    assert {a["labels"]["feature"] for a in firing} >= {"monthly_charges", "contract"}
    history = stack.mlflow().get_metric_history(result["mlflow_run_id"], "psi/monthly_charges")
    assert len(history) >= 2  # the quiet check and this one
    tags = stack.mlflow().get_model_version(stack.env["MODEL_NAME"], version).tags
    assert tags["drift.verdict"] == "drift"

    assert len(monitoring.asset_events_since("conveyor-input-drift", since)) == 1
    run = wait_for(
        lambda: monitoring.asset_runs_since(since), RUN_START_TIMEOUT, "a drift retrain run"
    )[0]
    measured.note(request, "drift: check triggered -> retrain run created", time.time() - since)
    done = monitoring.wait_retrain(run)
    assert done["trigger"]["trigger"] == "drift", done["trigger"]
    assert "input drift" in done["trigger"]["reason"] and "input drift" in done["note"]
    assert done["state"] == "success", monitoring.runs.explain(done)
