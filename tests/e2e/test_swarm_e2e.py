"""DEPLOY_TARGET=swarm end to end: a retrain run deploys its model to the swarm with 3 replicas
on >= 2 nodes while open-loop load at 200 req/s goes through the swarm's gateway on 127.0.0.1:
no failed request, the first version's answers, then only the new model's.

Needs the stack started with the swarm target's settings in the Airflow containers
(DEPLOY_TARGET=swarm and the SWARM_* lines `scripts/swarm.sh env` prints) and the swarm from
`scripts/swarm.sh up` with SWARM_CLIENT_NETWORK set to the stack's serving network, where the
deploy task runs. The first image the swarm serves is a stand-in (tests/release/fakes).
Driven through Airflow's REST API only; run by the coordinator's e2e stage.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_retrain_e2e import Runs, record  # noqa: F401 - record: a valid body
from tests.helpers.load import OpenLoopClient
from tests.release.fakes import build_fake

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RATE = 200


@pytest.fixture(scope="module")
def swarm_stack():
    import docker

    from scripts.airflow_api import AirflowClient, read_env_file

    env = {**read_env_file(), **os.environ}
    if env.get("DEPLOY_TARGET") != "swarm":
        pytest.skip("the stack runs DEPLOY_TARGET=compose: set DEPLOY_TARGET=swarm in .env")
    client = docker.from_env()
    first = build_fake(
        client, f"conveyor-test/fake-serving:v0-{uuid.uuid4().hex[:8]}", "0", ready=True
    )
    swarm_env = {**env, "SWARM_SERVING_IMAGE": first, "SERVING_REPLICAS": "3"}
    up = subprocess.run(
        ["bash", "scripts/swarm.sh", "up"],
        cwd=ROOT,
        env=swarm_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert up.returncode == 0, up.stderr[-3000:]
    wiring = dict(line.split("=", 1) for line in up.stdout.split())
    airflow = AirflowClient.from_env()
    airflow.wait_dag("retrain", timeout=180)
    airflow.set_paused("retrain", False)
    try:
        yield Runs(airflow), wiring["SWARM_GATEWAY_URL"]
    finally:
        subprocess.run(
            ["bash", "scripts/swarm.sh", "down"],
            cwd=ROOT,
            env=swarm_env,
            capture_output=True,
            timeout=300,
        )
        client.images.remove(first, force=True)


def test_a_retrain_run_deploys_to_three_replicas_on_the_swarm_under_load(swarm_stack, record):  # noqa: F811
    runs, gateway = swarm_stack
    start = time.monotonic()
    with OpenLoopClient(
        f"{gateway}/predict", {"inputs": [[0]]}, rate=RATE, max_requests=RATE * 1800
    ) as load:
        run = runs.run("2026-03-02", {"force_deploy": True, "ready_timeout": 600}, "swarm")
        answered_when_done = len(load.result.completed)
        time.sleep(3)
    result, seconds = load.result, time.monotonic() - start
    assert run["state"] == "success", runs.explain(run)
    summary = runs.xcom(run["dag_run_id"], "deploy")
    assert summary["target"] == "swarm" and summary["changed"] is True
    assert summary["replicas"] == 3 and sum(summary["nodes"].values()) == 3
    assert len(summary["nodes"]) >= 2, summary["nodes"]
    assert result.failures == [], f"{len(result.failures)} of {result.sent}: {result.failures[:5]}"
    assert result.sent >= 0.9 * RATE * seconds
    new = str(summary["model_version"])
    assert result.completed[0] == "0" and set(result.versions) == {"0", new}
    assert set(result.completed[answered_when_done + RATE // 2 :]) == {new}
