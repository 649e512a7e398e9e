"""Airflow on the CeleryExecutor, on the test stack: airflow/compose.celery.yaml merged over it
(Redis, two workers), the same DAG.

- a run's tasks spread over both workers;
- a worker SIGKILLed while it runs `train` (kept down): the task is retried on the other worker
  and the run succeeds with one new model version.

The stack goes back to the LocalExecutor at the end. The file sorts after test_retrain_e2e and
test_swarm_e2e on purpose: its runs register models, which those tests' gate would see.
"""

from __future__ import annotations

import secrets
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import RUN_TIMEOUT, model_versions
from tests.helpers.stack import TestStack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
OVERRIDE = str(ROOT / "airflow" / "compose.celery.yaml")
WORKERS = ("airflow-worker-1", "airflow-worker-2")
DAG = "retrain"


@pytest.fixture(scope="module")
def celery(test_stack: TestStack, runs):
    env = {"REDIS_PASSWORD": secrets.token_hex(16)}
    test_stack.script(
        "compose", "-f", OVERRIDE, "up", "-d", "--wait", "--wait-timeout", "600", timeout=900, **env
    )
    try:
        yield runs
    finally:
        test_stack.script(
            "compose", "-f", OVERRIDE, "rm", "-sf", *WORKERS, "redis", check=False, **env
        )
        test_stack.script("compose", "up", "-d", "--wait", "--wait-timeout", "480", timeout=900)


def test_a_runs_tasks_spread_over_both_workers(celery):
    run = celery.run("2026-05-01", {}, f"celery-{uuid.uuid4().hex[:6]}")
    assert run["state"] == "success", celery.explain(run)
    hosts = {ti["hostname"] for ti in run["tasks"].values() if ti["state"] == "success"}
    assert set(WORKERS) <= hosts, hosts


def test_a_worker_killed_mid_task_has_the_task_retried_on_the_other(celery, test_stack):
    import docker

    engine = docker.from_env()
    name = test_stack.env["MODEL_NAME"]
    before = model_versions(test_stack, name)
    run_id = celery.start("2026-05-02", {}, f"celery-kill-{uuid.uuid4().hex[:6]}")
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        train = celery.tasks(run_id).get("train", {})
        if train.get("state") == "running" and train.get("hostname") in WORKERS:
            break
        assert time.monotonic() < deadline, f"train never ran: {train}"
        time.sleep(1)
    victim = engine.containers.get(test_stack.container_id(train["hostname"]))
    victim.update(restart_policy={"Name": "no"})  # stays down: the retry must go elsewhere
    victim.kill(signal="SIGKILL")
    try:
        run = celery.wait(run_id)
        tasks = celery.tasks(run_id)
        assert run["state"] == "success", celery.explain({**run, "tasks": tasks})
        assert tasks["train"]["try_number"] >= 2
        (other,) = set(WORKERS) - {train["hostname"]}
        assert tasks["train"]["hostname"] == other
        assert len(model_versions(test_stack, name)) - len(before) == 1
    finally:
        victim.update(restart_policy={"Name": "unless-stopped"})
        victim.start()
