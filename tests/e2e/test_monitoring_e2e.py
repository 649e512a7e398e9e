"""Monitoring and data-aware retraining on the real stack, driven through the REST APIs only
(Airflow's, Prometheus's, Alertmanager's, the serving gateway's, S3's).

Needs the stack with airflow/compose.monitoring.yaml merged and the wiring of issue 14 in place
(retrain scheduled on retrain_schedule(), resolve_trigger first, train writing the reference
profile, the server counting its traffic); it uses the stack the e2e fixtures of
test_retrain_e2e.py start.

1. after a deploy Prometheus has the new serving container as an `up` target, and after the
   next deploy the old one is gone;
2. a batch uploaded to the landing bucket for a date starts a retrain run for that date (asset
   triggered, the date from the landing event) within LANDING_START_TIMEOUT, and it deploys;
3. drift: traffic drawn from the training distribution -> the monitor's verdict is ok and no
   retrain starts; shifted traffic -> drift above the threshold, a retrain run starts whose
   trigger is `drift` with the reason, and its note says so;
4. the serving container stopped -> ServingDown reaches Alertmanager; started again -> up.
Every wait is bounded.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
import urllib.parse
import urllib.request

import pytest

from pipelines import demo
from scripts.airflow_api import AirflowClient
from tests.e2e.test_retrain_e2e import (
    RUN_TIMEOUT,
    Runs,
    _env,
    _s3,
    _serving_url,
    stack,  # noqa: F401 - the stack fixture, shared
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("stack")]

LANDING_START_TIMEOUT = 180  # upload -> retrain run started (poke 15 s + scheduler loop)
ALERT_TIMEOUT = 240  # stop -> ServingDown in Alertmanager (`for: 1m` + scrape + group_wait)


def _get(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _prometheus() -> str:
    return f"http://127.0.0.1:{_env()['PROMETHEUS_PORT']}"


def _alertmanager() -> str:
    return f"http://127.0.0.1:{_env()['ALERTMANAGER_PORT']}"


def _serving_targets() -> dict[str, str]:
    data = _get(f"{_prometheus()}/api/v1/targets?state=active")["data"]["activeTargets"]
    return {
        t["labels"].get("container", ""): t["health"]
        for t in data
        if t["labels"].get("job") == "serving"
    }


def _wait(probe, timeout: float, what: str, interval: float = 3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _asset_runs_since(client: AirflowClient, since: float) -> list[dict]:
    """`retrain` runs started by an asset event at or after `since` (Unix time)."""
    out = []
    for run in client.dag_runs("retrain", limit=50):
        if run.get("run_type") != "asset_triggered":
            continue
        started = run.get("run_after") or run.get("queued_at") or ""
        if (
            started
            and dt.datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp() >= since
        ):
            out.append(run)
    return out


def _send(records: list[dict], batch: int = 100) -> None:
    for i in range(0, len(records), batch):
        body = json.dumps(records[i : i + batch]).encode()
        req = urllib.request.Request(
            f"{_serving_url()}/predict",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200


def _records(frame) -> list[dict]:
    import yaml

    from tests.e2e.test_retrain_e2e import ROOT

    schema = yaml.safe_load((ROOT / "params.yaml").read_text())["schema"]
    features = schema["numeric_features"] + schema["categorical_features"]
    return json.loads(frame[features].to_json(orient="records"))


@pytest.fixture(scope="module")
def retrains() -> Runs:
    if not _env().get("PROMETHEUS_PORT"):
        pytest.fail(
            "the stack has no monitoring settings (PROMETHEUS_PORT is not in .env): "
            "merge airflow/compose.monitoring.yaml and the issue-14 wiring first"
        )
    client = AirflowClient.from_env()
    for dag_id in ("retrain", "landing", "monitor"):
        client.wait_dag(dag_id, timeout=180)
        client.set_paused(dag_id, False)
    return Runs(client)


@pytest.fixture(scope="module")
def client(retrains) -> AirflowClient:
    return retrains.client


def test_prometheus_follows_the_deployed_container(retrains: Runs, client):
    first = retrains.run("2026-04-01", {"force_deploy": True}, "prom-first")
    assert first["state"] == "success", retrains.explain(first)
    container = retrains.xcom(first["dag_run_id"], "deploy")["container"]
    _wait(lambda: _serving_targets().get(container) == "up", 60, f"{container} up")
    second = retrains.run(
        "2026-04-02", {"force_deploy": True, "min_improvement": -1.0}, "prom-second"
    )
    assert second["state"] == "success", retrains.explain(second)
    deployed = retrains.xcom(second["dag_run_id"], "deploy")
    assert deployed["changed"] and deployed["previous"] == container
    _wait(lambda: _serving_targets().get(deployed["container"]) == "up", 60, "new container up")
    _wait(lambda: container not in _serving_targets(), 60, f"{container} gone from targets")


def test_a_landed_batch_starts_a_retrain_run_for_its_date(retrains: Runs, client):
    env = _env()
    day = "2026-04-05"
    key = env["LANDING_KEY_TEMPLATE"].replace("{date}", day)
    client.trigger("landing", f"{day}T00:00:00Z", {}, run_id=f"e2e-landing-{retrains.tag}")
    since = time.time()
    frame = demo.generate(dt.date.fromisoformat(day), seed=7, rows=3000)
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    _s3().put_object(Bucket=env["S3_BUCKET_LANDING"], Key=key, Body=buf.getvalue().encode())

    run = _wait(
        lambda: _asset_runs_since(client, since),
        LANDING_START_TIMEOUT,
        "an asset-triggered retrain run",
    )[0]
    done = client.wait_run("retrain", run["dag_run_id"], timeout=RUN_TIMEOUT, poll=5)
    done["tasks"] = retrains.tasks(run["dag_run_id"])
    assert done["state"] == "success", retrains.explain(done)
    trigger = retrains.xcom(run["dag_run_id"], "resolve_trigger")
    assert trigger["trigger"] == "landing" and trigger["date"] == day
    assert trigger["source"].endswith(env["LANDING_KEY_TEMPLATE"])
    assert done["tasks"]["ingest"]["state"] == "success"
    assert done["tasks"]["summarize"]["state"] == "success"
    assert day in (client.dag_run("retrain", run["dag_run_id"]).get("note") or "")


def _monitor(retrains: Runs, client, name: str) -> dict:
    run_id = f"e2e-{retrains.tag}-{name}"
    client.trigger("monitor", None, {}, run_id=run_id)
    run = client.wait_run("monitor", run_id, timeout=600, poll=5)
    assert run["state"] == "success", run
    data = client.request(
        "GET", f"/api/v2/dags/monitor/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
    )
    states = {t["task_id"]: t["state"] for t in data["task_instances"]}
    path = (
        f"/api/v2/dags/monitor/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        "/taskInstances/check_drift/xcomEntries/return_value"
    )
    value = client.request("GET", path)["value"]
    return {"states": states, "summary": value if isinstance(value, dict) else json.loads(value)}


def test_drift_triggers_a_retrain_only_when_the_inputs_shift(retrains: Runs, client):
    same = demo.generate(dt.date(2026, 4, 10), seed=31, rows=600)
    _send(_records(same))
    time.sleep(40)  # two scrapes
    since = time.time()
    quiet = _monitor(retrains, client, "drift-quiet")
    assert quiet["summary"]["verdict"] == "ok", quiet
    assert quiet["states"]["request_retrain"] == "skipped"
    time.sleep(30)
    assert _asset_runs_since(client, since) == []

    shifted = demo.generate(dt.date(2026, 4, 10), seed=32, rows=6000)
    shifted["monthly_charges"] = shifted["monthly_charges"] * 2.5
    shifted["contract"] = "two_year"
    _send(_records(shifted))
    time.sleep(40)
    since = time.time()
    loud = _monitor(retrains, client, "drift-loud")
    summary = loud["summary"]
    assert summary["verdict"] == "drift", summary
    assert loud["states"]["request_retrain"] == "success"
    alerts = _get(f"{_prometheus()}/api/v1/query?query=conveyor_feature_drift_psi")["data"]
    assert any(float(s["value"][1]) > summary["threshold"] for s in alerts["result"])

    run = _wait(
        lambda: _asset_runs_since(client, since),
        LANDING_START_TIMEOUT,
        "a drift-triggered retrain run",
    )[0]
    done = client.wait_run("retrain", run["dag_run_id"], timeout=RUN_TIMEOUT, poll=5)
    trigger = retrains.xcom(run["dag_run_id"], "resolve_trigger")
    assert trigger["trigger"] == "drift" and "input drift" in trigger["reason"]
    assert "input drift" in (client.dag_run("retrain", run["dag_run_id"]).get("note") or "")
    assert done["state"] in ("success", "failed")


def test_stopping_the_serving_container_fires_serving_down(retrains: Runs, client):
    import docker

    targets = _wait(
        lambda: {c for c, h in _serving_targets().items() if h == "up"}, 60, "a serving target"
    )
    engine = docker.from_env()
    stopped = [engine.containers.get(name) for name in targets]
    for container in stopped:
        container.stop(timeout=5)
    try:

        def serving_down():
            alerts = _get(f"{_alertmanager()}/api/v2/alerts")
            return [a for a in alerts if a["labels"].get("alertname") == "ServingDown"]

        alert = _wait(serving_down, ALERT_TIMEOUT, "ServingDown in Alertmanager", interval=5)[0]
        assert alert["status"]["state"] == "active"
    finally:
        for container in stopped:
            container.start()
    _wait(lambda: any(h == "up" for h in _serving_targets().values()), 120, "serving up again")
