"""DEPLOY_TARGET=swarm end to end, on the test stack: a retrain run deploys its model to a swarm
of 3 engine nodes with 3 replicas on >= 2 nodes while open-loop load at 200 req/s goes through
the swarm's gateway on 127.0.0.1: no failed request, the first image's answers, then only the
new model's.

The swarm is this test's own (scripts/swarm.sh up, SWARM_CLIENT_NETWORK = the test stack's
serving network, where the deploy task runs). The stack's Airflow services are recreated with
DEPLOY_TARGET=swarm and the swarm's settings, and put back on DEPLOY_TARGET=compose at the
end: this needs airflow/docker-compose.yaml to pass DEPLOY_TARGET and the SWARM_* settings to
the Airflow containers (release/README.md lists them). Driven through Airflow's REST API.
"""

from __future__ import annotations

import time
import uuid

import pytest

from scripts.local_swarm import LocalSwarm
from tests.helpers.load import OpenLoopClient
from tests.helpers.stack import TestStack
from tests.release.fakes import build_fake

pytestmark = pytest.mark.e2e

RATE = 200
AIRFLOW = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor")


def _airflow_up(stack: TestStack, **env: str) -> None:
    stack.script("compose", "up", "-d", "--wait", "--wait-timeout", "480", *AIRFLOW, **env)


@pytest.fixture(scope="module")
def swarm(test_stack: TestStack):
    import docker

    client = docker.from_env()
    run = uuid.uuid4().hex[:8]
    first = build_fake(client, f"conveyor-test/fake-serving:v0-{run}", "0", ready=True)
    local = LocalSwarm(
        "conveyor-test",
        first,
        run,
        SWARM_UPDATE_MONITOR="5s",
        SERVING_REPLICAS="3",
        SERVING_CPUS="1",
        SERVING_MEMORY_MB="1024",
        SWARM_CLIENT_NETWORK=test_stack.env["CONVEYOR_SERVING_NETWORK"],
    )
    try:
        wiring = local.up(timeout=900)
        _airflow_up(
            test_stack,
            DEPLOY_TARGET="swarm",
            **{k: v for k, v in wiring.items() if k != "SWARM_GATEWAY_URL"},
        )
        yield wiring["SWARM_GATEWAY_URL"]
    finally:
        _airflow_up(test_stack, DEPLOY_TARGET="compose")
        local.down()
        client.images.remove(first, force=True)


def test_a_retrain_run_deploys_to_three_replicas_on_the_swarm_under_load(swarm, runs, record):
    start = time.monotonic()
    with OpenLoopClient(f"{swarm}/predict", record, rate=RATE, max_requests=RATE * 1800) as load:
        run = runs.run("2026-05-20", {"force_deploy": True, "ready_timeout": 600}, "swarm")
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
