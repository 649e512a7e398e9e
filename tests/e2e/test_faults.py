"""Faults in the middle of a `retrain` run, on the test stack: each run must still end `success`
with exactly one MLflow run and one model version for its date, no task container left behind
or running twice, and the served model answering throughout (open-loop load, 0 failures).

- the scheduler's process SIGKILLed while `train` runs (its LocalExecutor workers die with it,
  the task's container goes on): the task is retried, resumes that container, and the run ends
  within 90 s of the kill;
- `docker compose restart postgres` while `train` runs;
- the S3 store stopped while `dvc_push` runs, started again 20 s later: the push is retried and
  the workspace's `dvc status -c` is clean;
- MLflow stopped while `register` runs, started again 20 s later.

These runs keep the champion (`min_improvement` 1000: no build, no deploy), so what is measured
is the recovery of the steps hit by the fault. Each test prints the time from the fault to the
run's end (README, "Faults and recovery").
"""

from __future__ import annotations

import os
import signal
import time

import docker
import pytest

from scripts.airflow_api import AirflowError
from tests.e2e.conftest import (
    RUN_TIMEOUT,
    Runs,
    get_json,
    wait_serving_ready,
)
from tests.helpers.load import OpenLoopClient
from tests.helpers.stack import TestStack

pytestmark = pytest.mark.e2e

KEEP_CHAMPION = {"min_improvement": 1000.0}


@pytest.fixture(scope="module")
def served(runs: Runs, serving_url: str) -> str:
    """A deployed model to keep answering during the faults (deploys one if none is ready)."""
    try:
        return str(get_json(f"{serving_url}/ready")["model_version"])
    except OSError:
        run = runs.run("2026-02-01", {"force_deploy": True}, "faults-first")
        assert run["state"] == "success", runs.explain(run)
        return str(wait_serving_ready(serving_url)["model_version"])


def task_containers(run_id: str, task_id: str | None = None) -> list:
    labels = [f"io.conveyor.run_id={run_id}"]
    if task_id:
        labels.append(f"io.conveyor.task_id={task_id}")
    return docker.from_env().containers.list(
        all=True, filters={"label": labels}, ignore_removed=True
    )


def wait_running(runs: Runs, run_id: str, task_id: str, timeout: float = 600) -> None:
    """Until `task_id` of the run is running and its container has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ti = runs.tasks(run_id).get(task_id, {})
        if ti.get("state") == "running" and any(
            c.status == "running" for c in task_containers(run_id, task_id)
        ):
            return
        state = runs.client.dag_run("retrain", run_id)["state"]
        assert state in ("queued", "running"), f"{run_id} ended ({state}) before {task_id} ran"
        time.sleep(0.3)
    pytest.fail(f"{task_id} of {run_id} did not start running within {timeout}s")


def mlflow_train_runs(stack: TestStack, day: str) -> list:
    client = stack.mlflow()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(
        experiments, f"tags.`conveyor.ingest_date` = '{day}' and tags.`conveyor.stage` = 'train'"
    )


def versions_of_runs(stack: TestStack, name: str, run_ids: set[str]) -> list:
    client = stack.mlflow()
    return [v for v in client.search_model_versions(f"name='{name}'") if v.run_id in run_ids]


class Fault:
    """One run under load with a fault injected by `inject(run_id)`; checks what must hold."""

    def __init__(self, runs: Runs, stack: TestStack, serving_url: str, record: dict):
        self.runs, self.stack, self.serving_url, self.record = runs, stack, serving_url, record
        self.max_task_containers = 0

    def watch_containers(self, run_id: str) -> None:
        running = {}
        for c in task_containers(run_id):
            if c.status == "running":
                task = c.labels["io.conveyor.task_id"]
                running[task] = running.get(task, 0) + 1
        self.max_task_containers = max([self.max_task_containers, *running.values()])

    def run(self, day: str, name: str, inject) -> tuple[dict, float]:
        with OpenLoopClient(
            f"{self.serving_url}/predict", self.record, rate=20, max_requests=int(20 * RUN_TIMEOUT)
        ) as load:
            run_id = self.runs.start(day, KEEP_CHAMPION, name)
            fault_at = inject(run_id)
            deadline = time.monotonic() + RUN_TIMEOUT
            while self.state(run_id) not in ("success", "failed"):
                self.watch_containers(run_id)
                assert time.monotonic() < deadline, f"{run_id} did not end in {RUN_TIMEOUT}s"
                time.sleep(1)
            recovered = time.monotonic() - fault_at
            run = self.runs.wait(run_id)
        print(f"\n{name}: run ended {recovered:.0f}s after the fault")
        self.check(run, day, load.result)
        return run, recovered

    def state(self, run_id: str) -> str | None:
        """The run's state; None while the API cannot say (its database is restarting)."""
        try:
            return self.runs.client.dag_run("retrain", run_id)["state"]
        except AirflowError:
            return None

    def check(self, run: dict, day: str, load) -> None:
        assert run["state"] == "success", self.runs.explain(run)
        trained = mlflow_train_runs(self.stack, day)
        assert len(trained) == 1, [r.info.run_id for r in trained]
        registration = self.runs.xcom(run["dag_run_id"], "register")
        versions = versions_of_runs(
            self.stack, registration["model_name"], {r.info.run_id for r in trained}
        )
        every = {
            v.version: v.run_id
            for v in self.stack.mlflow().search_model_versions(
                f"name='{registration['model_name']}'"
            )
        }
        assert [v.version for v in versions] == [str(registration["version"])], (
            registration,
            every,
            [r.info.run_id for r in trained],
        )
        assert self.max_task_containers <= 1, "a task ran in two containers at once"
        assert task_containers(run["dag_run_id"]) == [], "task containers left behind"
        assert load.sent > 20
        assert load.failures == [], f"{len(load.failures)} of {load.sent}: {load.failures[:5]}"


@pytest.fixture
def fault(runs, test_stack, serving_url, record, served) -> Fault:
    return Fault(runs, test_stack, serving_url, record)


def test_scheduler_killed_during_train(fault: Fault, test_stack: TestStack):
    def kill_scheduler(run_id: str) -> float:
        wait_running(fault.runs, run_id, "train")
        pid = docker.from_env().containers.get(test_stack.container_id("airflow-scheduler"))
        os.kill(pid.attrs["State"]["Pid"], signal.SIGKILL)
        return time.monotonic()

    run, recovered = fault.run("2026-04-01", "kill-scheduler", kill_scheduler)
    assert run["tasks"]["train"]["try_number"] >= 2  # the lost try was retried...
    assert recovered <= 90, f"the run ended {recovered:.0f}s after the kill"


def test_postgres_restarted_during_train(fault: Fault, test_stack: TestStack):
    def restart_postgres(run_id: str) -> float:
        wait_running(fault.runs, run_id, "train")
        at = time.monotonic()
        test_stack.compose("restart", "postgres", timeout=120)
        return at

    fault.run("2026-04-02", "restart-postgres", restart_postgres)


def stop_for(stack: TestStack, service: str, seconds: float) -> None:
    stack.compose("stop", service, timeout=120)
    time.sleep(seconds)
    stack.compose("start", service, timeout=120)


def test_s3_stopped_during_dvc_push(fault: Fault, test_stack: TestStack, train_image_of_stack):
    def stop_s3(run_id: str) -> float:
        wait_running(fault.runs, run_id, "dvc_push")
        at = time.monotonic()
        stop_for(test_stack, "s3", 20)
        return at

    run, _ = fault.run("2026-04-03", "stop-s3", stop_s3)
    assert run["tasks"]["dvc_push"]["try_number"] >= 2
    status = dvc_status_cloud(test_stack, train_image_of_stack)
    assert "in sync" in status, status


def test_mlflow_stopped_during_register(fault: Fault, test_stack: TestStack):
    def stop_mlflow(run_id: str) -> float:
        wait_running(fault.runs, run_id, "register")
        at = time.monotonic()
        stop_for(test_stack, "mlflow", 20)
        return at

    fault.run("2026-04-04", "stop-mlflow", stop_mlflow)


@pytest.fixture(scope="module")
def train_image_of_stack(test_stack: TestStack) -> str:
    out = test_stack.compose("exec", "-T", "airflow-scheduler", "printenv", "TRAIN_IMAGE").stdout
    return out.strip().splitlines()[-1]


def dvc_status_cloud(stack: TestStack, image: str) -> str:
    """`dvc status -c` in the DAG's workspace, from a container like the DAG's own tasks."""
    env = stack.env
    out = docker.from_env().containers.run(
        image,
        ["dvc", "status", "-c"],
        remove=True,
        working_dir="/workspace",
        network=env["CONVEYOR_TASK_NETWORK"],
        volumes={env["CONVEYOR_WORKSPACE_VOLUME"]: {"bind": "/workspace", "mode": "rw"}},
        environment={
            "AWS_ENDPOINT_URL": "http://s3:8333",
            "AWS_ACCESS_KEY_ID": env["S3_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": env["S3_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    return out.decode()
