"""Monitoring and data-aware retraining on the real stack (the suite's own: `test_stack`), driven
through the REST APIs only (Airflow's, Prometheus's, Alertmanager's, MLflow's, the gateway's,
S3's) and the Docker engine (to stop a serving container).

1. Prometheus scrapes MLflow, the Airflow exporter, the Pushgateway and Alertmanager;
2. a batch uploaded to the landing bucket starts a retrain run for its date (asset-triggered, the
   date and source from the landing event) within LANDING_START_TIMEOUT, and it deploys; its
   container is an `up` serving target;
3. the next deploy: the new container is a target, the old one is gone;
4. drift (needs the server to count its traffic: serving/traffic.py wired into serving/):
   traffic drawn from the training distribution -> verdict ok, no retrain; shifted traffic ->
   PSI above the threshold, InputDrift fires, the drift history is in MLflow, and a retrain run
   starts whose trigger is `drift`, with the reason in its run note;
5. every serving container stopped -> ServingDown reaches Alertmanager; started again -> up.
Every wait is bounded; the measured delays are printed (pytest -s shows them).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from pipelines import demo
from tests.e2e.conftest import ROOT, Runs, get_json, post_json
from tests.helpers.stack import TestStack

pytestmark = pytest.mark.e2e

LANDING_START_TIMEOUT = 180  # upload -> retrain run created (15 s poke + scheduler loops)
TARGET_TIMEOUT = 90  # deploy -> Prometheus target up / gone (15 s SD refresh + scrape)
ALERT_TIMEOUT = 240  # stop -> ServingDown in Alertmanager (`for: 1m` + SD + eval + group_wait)
LANDING_DAY = "2026-04-05"


def _wait(probe, timeout: float, what: str, interval: float = 3.0):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Monitoring:
    """The stack's Prometheus, Alertmanager and DAG runs other than retrain's."""

    def __init__(self, stack: TestStack, runs: Runs):
        self.stack, self.runs, self.client = stack, runs, runs.client
        self.prometheus = stack.url("PROMETHEUS_PORT")
        self.alertmanager = stack.url("ALERTMANAGER_PORT")

    def query(self, promql: str) -> list[dict]:
        q = urllib.parse.urlencode({"query": promql})
        return get_json(f"{self.prometheus}/api/v1/query?{q}", timeout=10)["data"]["result"]

    def targets(self, job: str) -> dict[str, str]:
        data = get_json(f"{self.prometheus}/api/v1/targets?state=active", timeout=10)
        return {
            t["labels"].get("container") or t["labels"].get("instance", ""): t["health"]
            for t in data["data"]["activeTargets"]
            if t["labels"].get("job") == job
        }

    def firing(self, alertname: str) -> list[dict]:
        alerts = get_json(f"{self.prometheus}/api/v1/alerts", timeout=10)["data"]["alerts"]
        return [
            a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"
        ]

    def asset_runs_since(self, since: float) -> list[dict]:
        """`retrain` runs an asset event started at or after `since` (Unix time)."""
        out = []
        for run in self.client.dag_runs("retrain", limit=50):
            stamp = run.get("run_after") or run.get("queued_at") or ""
            if run.get("run_type") == "asset_triggered" and stamp:
                if dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() >= since:
                    out.append(run)
        return out

    def run_dag(self, dag_id: str, name: str, logical_date: str | None = None) -> dict:
        run_id = f"e2e-{self.runs.tag}-{name}"
        self.client.trigger(dag_id, logical_date, {}, run_id=run_id)
        run = self.client.wait_run(dag_id, run_id, timeout=600, poll=3)
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        tasks = self.client.request("GET", f"{path}/taskInstances")["task_instances"]
        run["tasks"] = {t["task_id"]: t["state"] for t in tasks}
        run["path"] = path
        return run

    def check_drift(self, name: str) -> dict:
        run = self.run_dag("monitor", name)
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
def monitoring(test_stack: TestStack, runs: Runs) -> Monitoring:
    # What `make up` does once per stack (the test stack starts with FIRST_RUN=0); they have no
    # clock on the test stack: their runs come from the tests.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/airflow_api.py"), "activate", "landing", "monitor"],
        env={**os.environ, "CONVEYOR_ENV_FILE": str(test_stack.env_file)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    paused = {d["dag_id"]: d["is_paused"] for d in runs.client.dags()}
    assert paused["landing"] is False and paused["monitor"] is False, paused
    return Monitoring(test_stack, runs)


@pytest.fixture(scope="module")
def state() -> dict:
    return {}


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

    _wait(all_up, TARGET_TIMEOUT, f"targets {jobs} up")
    # The exporter's read-only role reads Airflow's tables (it would export nothing otherwise).
    assert monitoring.query('airflow_dag_paused{dag_id="retrain"}'), "no airflow_dag metrics"
    # `mlflow server --expose-prometheus`: prometheus-flask-exporter's series, prefix mlflow_.
    assert monitoring.query('{job="mlflow", __name__=~"mlflow_.*"}'), "no mlflow_* series"


def test_a_landed_batch_starts_a_retrain_run_for_its_date_and_deploys(monitoring, state):
    stack, client = monitoring.stack, monitoring.client
    # No champion: the gate promotes the landed batch's model, so this run deploys.
    mlflow = stack.mlflow()
    try:
        mlflow.delete_registered_model_alias(stack.env["MODEL_NAME"], "champion")
    except Exception:  # noqa: BLE001 - no model or no alias yet
        pass
    key = stack.env["LANDING_KEY_TEMPLATE"].replace("{date}", LANDING_DAY)
    waiting = f"e2e-{monitoring.runs.tag}-landing"
    client.trigger("landing", f"{LANDING_DAY}T00:00:00Z", {}, run_id=waiting)
    buf = io.StringIO()
    demo.generate(dt.date.fromisoformat(LANDING_DAY), seed=7, rows=3000).to_csv(buf, index=False)
    since = time.time()
    stack.s3().put_object(
        Bucket=stack.env["S3_BUCKET_LANDING"], Key=key, Body=buf.getvalue().encode()
    )
    run = _wait(
        lambda: monitoring.asset_runs_since(since), LANDING_START_TIMEOUT, "a landing retrain run"
    )[0]
    print(f"\nlanding: upload -> retrain run created in {time.time() - since:.0f}s")
    done = monitoring.wait_retrain(run)
    assert done["state"] == "success", monitoring.runs.explain(done)
    assert done["trigger"]["trigger"] == "landing" and done["trigger"]["date"] == LANDING_DAY
    assert done["trigger"]["source"].endswith(stack.env["LANDING_KEY_TEMPLATE"])
    assert done["tasks"]["deploy"]["state"] == "success", monitoring.runs.explain(done)
    assert done["tasks"]["summarize"]["state"] == "success"
    assert f"retrain {LANDING_DAY}** (landing)" in done["note"] and "**deployed**" in done["note"]
    deployed = monitoring.runs.xcom(run["dag_run_id"], "deploy")
    print(f"landing: run {run['dag_run_id']} deployed {deployed['container']}")
    _wait(
        lambda: monitoring.targets("serving").get(deployed["container"]) == "up",
        TARGET_TIMEOUT,
        f"{deployed['container']} an up serving target",
    )
    state["container"] = deployed["container"]


def test_prometheus_follows_the_next_deploy(monitoring, state):
    if "container" not in state:
        pytest.skip("needs the landing test's deploy")
    old = state["container"]
    run = monitoring.runs.run("2026-04-06", {"force_deploy": True, "min_improvement": -1.0}, "next")
    assert run["state"] == "success", monitoring.runs.explain(run)
    deployed = monitoring.runs.xcom(run["dag_run_id"], "deploy")
    assert deployed["changed"] and deployed["previous"] == old, deployed
    new = deployed["container"]
    _wait(lambda: monitoring.targets("serving").get(new) == "up", TARGET_TIMEOUT, f"{new} up")
    _wait(lambda: old not in monitoring.targets("serving"), TARGET_TIMEOUT, f"{old} gone")
    state["container"] = new


def test_drift_starts_a_retrain_only_when_the_inputs_shift(monitoring, state):
    stack, url = monitoring.stack, monitoring.stack.url("SERVING_PORT")
    meta = get_json(f"{url}/metadata", timeout=10)
    version = str(meta["model_version"])
    same = demo.generate(dt.date.fromisoformat(LANDING_DAY), seed=31, rows=600)
    _send(url, same)
    counted = f'sum(conveyor_traffic_records_total{{job="serving", model_version="{version}"}})'
    metrics = get_text(f"{url}/metrics")
    if "conveyor_traffic_records_total" not in metrics:
        pytest.fail(
            "the serving container counts no traffic (no conveyor_traffic_records_total on its "
            "/metrics): serving/ does not call serving/traffic.py's TrafficAggregator yet (the "
            "hook: README, 'Monitoring'), or the served model has no reference_profile.json"
        )
    _wait(
        lambda: [r for r in monitoring.query(counted) if float(r["value"][1]) >= 600],
        TARGET_TIMEOUT,
        "the served records in Prometheus",
    )
    since = time.time()
    quiet = monitoring.check_drift("drift-quiet")
    assert quiet["summary"]["verdict"] == "ok", quiet["summary"]
    assert quiet["tasks"]["request_retrain"] == "skipped"
    time.sleep(30)
    assert monitoring.asset_runs_since(since) == []

    shifted = demo.generate(dt.date.fromisoformat(LANDING_DAY), seed=32, rows=4000)
    shifted["monthly_charges"] = shifted["monthly_charges"] * 2.5
    shifted["contract"] = "two_year"
    _send(url, shifted)
    _wait(
        lambda: [r for r in monitoring.query(counted) if float(r["value"][1]) >= 4600],
        TARGET_TIMEOUT,
        "the shifted records in Prometheus",
    )
    since = time.time()
    loud = monitoring.check_drift("drift-loud")
    summary = loud["summary"]
    assert summary["verdict"] == "drift" and summary["drift_version"] == version, summary
    assert loud["tasks"]["request_retrain"] == "success"
    [result] = [r for r in summary["versions"] if r["model_version"] == version]
    assert result["psi"]["monthly_charges"] > summary["threshold"]
    assert result["psi"]["contract"] > summary["threshold"]
    firing = _wait(lambda: monitoring.firing("InputDrift"), 60, "InputDrift firing")
    assert {a["labels"]["feature"] for a in firing} >= {"monthly_charges", "contract"}
    history = stack.mlflow().get_metric_history(result["mlflow_run_id"], "psi/monthly_charges")
    assert len(history) >= 2  # the quiet check and this one
    tags = stack.mlflow().get_model_version(stack.env["MODEL_NAME"], version).tags
    assert tags["drift.verdict"] == "drift"

    run = _wait(
        lambda: monitoring.asset_runs_since(since), LANDING_START_TIMEOUT, "a drift retrain run"
    )[0]
    print(f"\ndrift: check triggered -> retrain run created in {time.time() - since:.0f}s")
    done = monitoring.wait_retrain(run)
    assert done["trigger"]["trigger"] == "drift", done["trigger"]
    assert "input drift" in done["trigger"]["reason"] and "input drift" in done["note"]
    assert done["state"] == "success", monitoring.runs.explain(done)


def test_stopping_the_serving_containers_fires_serving_down(monitoring):
    import docker

    up = _wait(
        lambda: [c for c, h in monitoring.targets("serving").items() if h == "up"],
        TARGET_TIMEOUT,
        "an up serving target",
    )
    engine = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    stopped = [engine.containers.get(name) for name in up]
    since = time.time()
    for container in stopped:
        container.stop(timeout=5)
    try:

        def serving_down():
            alerts = get_json(f"{monitoring.alertmanager}/api/v2/alerts", timeout=10)
            return [a for a in alerts if a["labels"].get("alertname") == "ServingDown"]

        alert = _wait(serving_down, ALERT_TIMEOUT, "ServingDown in Alertmanager", interval=5)[0]
        print(f"\nServingDown: containers stopped -> in Alertmanager in {time.time() - since:.0f}s")
        assert alert["status"]["state"] == "active"
    finally:
        for container in stopped:
            container.start()
        engine.close()
    _wait(
        lambda: any(h == "up" for h in monitoring.targets("serving").values()),
        TARGET_TIMEOUT,
        "serving up again",
    )
