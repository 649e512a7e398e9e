"""Airflow on the CeleryExecutor (airflow/compose.celery.yaml over the stack), the same DAG:

- the override merges as designed (`docker-compose config`, no stack started): every Airflow
  service on CeleryExecutor, two workers reaching Docker through the socket proxy, Redis;
- on the running stack: a run's tasks spread over both workers;
- a worker SIGKILLed while it runs `train`: the task is retried on the other worker and the run
  succeeds with one new model version.

The last two need the whole stack (stack.sh's compose with the override as a second -f):
marked e2e, run by the coordinator's stack tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from scripts.airflow_api import AirflowClient, read_env_file

ROOT = Path(__file__).resolve().parents[2]
OVERRIDE = ROOT / "airflow" / "compose.celery.yaml"
STACK = ["bash", str(ROOT / "scripts" / "stack.sh")]
WORKERS = ("airflow-worker-1", "airflow-worker-2")
DAG = "retrain"
RUN_TIMEOUT = float(os.environ.get("E2E_RUN_TIMEOUT", "1500"))


@pytest.mark.unit
def test_the_override_puts_every_airflow_service_on_celery(tmp_path):
    secrets = {
        name: "x"
        for name in (
            "AIRFLOW_FERNET_KEY",
            "AIRFLOW_DB_PASSWORD",
            "AIRFLOW_API_SECRET_KEY",
            "AIRFLOW_JWT_SECRET",
            "POSTGRES_PASSWORD",
            "MLFLOW_DB_PASSWORD",
            "S3_ACCESS_KEY_ID",
            "S3_SECRET_ACCESS_KEY",
            "AIRFLOW_ADMIN_PASSWORD",
            "REDIS_PASSWORD",
        )
    }
    images = {
        name: f"conveyor/{name.lower()}:test"
        for name in (
            "AIRFLOW_IMAGE",
            "POSTGRES_IMAGE",
            "MLFLOW_IMAGE",
            "S3_IMAGE",
            "SOCKET_PROXY_IMAGE",
            "REDIS_IMAGE",
        )
    }
    proc = subprocess.run(
        [
            str(ROOT / ".venv/bin/docker-compose"),
            "-f",
            str(ROOT / "airflow/docker-compose.yaml"),
            "-f",
            str(OVERRIDE),
            "config",
            "--format",
            "json",
        ],
        env={"PATH": os.environ["PATH"], **secrets, **images},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    airflow = {n: s for n, s in services.items() if s.get("image") == images["AIRFLOW_IMAGE"]}
    assert set(airflow) == {
        "airflow-init",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        *WORKERS,
    }
    for name, service in airflow.items():
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://:x@redis:6379/0", name
    for name in WORKERS:
        worker = services[name]
        assert worker["command"] == ["airflow", "celery", "worker"]
        assert worker["hostname"] == name
        assert "serving" in worker["networks"]  # the socket proxy's network
        assert worker["environment"]["DOCKER_HOST"] == "tcp://docker-socket-proxy:2375"
        assert {"redis", "docker-socket-proxy"} <= set(worker["depends_on"])
    assert services["redis"]["environment"]["REDIS_PASSWORD"] == "x"
    assert "ports" not in services["redis"]


def _compose(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*STACK, "compose", "-f", str(OVERRIDE), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def celery_stack():
    """The stack (stack.sh up: .env, images, LocalExecutor), then the override over it; put
    back on the LocalExecutor at the end."""
    up = subprocess.run(
        [*STACK, "up"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "FIRST_RUN": "0"},
    )
    assert up.returncode == 0, up.stderr[-3000:]
    proc = _compose("up", "-d", "--wait", "--wait-timeout", "600")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = AirflowClient.from_env()
    client.wait_dag(DAG, timeout=180)
    client.set_paused(DAG, False)
    yield client
    _compose("rm", "-sf", *WORKERS, "redis", timeout=300)
    subprocess.run(
        [*STACK, "up"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "FIRST_RUN": "0"},
    )


def _tasks(client: AirflowClient, run_id: str) -> dict[str, dict]:
    quoted = urllib.request.quote(run_id, safe="")
    data = client.request("GET", f"/api/v2/dags/{DAG}/dagRuns/{quoted}/taskInstances?limit=100")
    return {ti["task_id"]: ti for ti in data["task_instances"]}


def _model_versions() -> int:
    env = {**read_env_file(), **os.environ}
    url = f"http://127.0.0.1:{env['MLFLOW_PORT']}/api/2.0/mlflow/model-versions/search"
    with urllib.request.urlopen(f"{url}?max_results=1000", timeout=10) as resp:
        return len(json.loads(resp.read()).get("model_versions", []))


@pytest.mark.e2e
def test_a_runs_tasks_spread_over_both_workers(celery_stack):
    run_id = f"celery-{uuid.uuid4().hex[:8]}"
    celery_stack.trigger(DAG, "2026-02-01T00:00:00Z", {}, run_id=run_id)
    run = celery_stack.wait_run(DAG, run_id, timeout=RUN_TIMEOUT, poll=5)
    assert run["state"] == "success", run
    hosts = {
        ti["hostname"]
        for ti in _tasks(celery_stack, run_id).values()
        if ti["state"] == "success" and ti["hostname"]
    }
    assert set(WORKERS) <= hosts, hosts


@pytest.mark.e2e
def test_a_worker_killed_mid_task_has_the_task_retried_on_the_other(celery_stack):
    import docker

    engine = docker.from_env()
    before = _model_versions()
    run_id = f"celery-kill-{uuid.uuid4().hex[:8]}"
    celery_stack.trigger(DAG, "2026-02-02T00:00:00Z", {}, run_id=run_id)
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        train = _tasks(celery_stack, run_id).get("train", {})
        if train.get("state") == "running" and train.get("hostname"):
            break
        assert time.monotonic() < deadline, f"train never ran: {train}"
        time.sleep(1)
    victim = engine.containers.list(
        filters={"label": [f"com.docker.compose.service={train['hostname']}"]}
    )[0]
    victim.update(restart_policy={"Name": "no"})  # stays down: the retry must go elsewhere
    victim.kill(signal="SIGKILL")
    try:
        run = celery_stack.wait_run(DAG, run_id, timeout=RUN_TIMEOUT, poll=5)
        tasks = _tasks(celery_stack, run_id)
        assert run["state"] == "success", {t: ti["state"] for t, ti in tasks.items()}
        assert tasks["train"]["try_number"] >= 2
        (other,) = set(WORKERS) - {train["hostname"]}
        assert tasks["train"]["hostname"] == other
        assert _model_versions() - before == 1  # the retry registered no second version
    finally:
        victim.update(restart_policy={"Name": "unless-stopped"})
        victim.start()
