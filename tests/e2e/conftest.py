"""Shared by the e2e tests: the test stack's Airflow runs (trigger, tasks, XComs, logs, re-run),
HTTP helpers for the serving gateway, a valid record, batches uploaded to the landing bucket, a
served model for a module run on its own.

Every wait is bounded, and each bound is below pytest's own timeout (pyproject.toml): a hang ends
with the wait's explanation, not a stack dump."""

from __future__ import annotations

import ast
import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from scripts.airflow_api import AirflowClient, AirflowError
from tests.helpers.stack import TestStack

ROOT = Path(__file__).resolve().parents[2]
DAG = "retrain"
RUN_TIMEOUT = 600.0  # one retrain run, faults included; a healthy one takes 1-3 minutes here


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def post_json(url: str, body, timeout: float = 10.0):
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class Runs:
    """Trigger `retrain` runs and read their task states, XComs and logs."""

    def __init__(self, client: AirflowClient):
        self.client = client
        self.tag = uuid.uuid4().hex[:8]

    def start(self, day: str, conf: dict, name: str) -> str:
        run_id = f"e2e-{self.tag}-{name}"
        self.client.trigger(DAG, f"{day}T00:00:00Z", conf, run_id=run_id)
        return run_id

    def wait(self, run_id: str, timeout: float = RUN_TIMEOUT) -> dict:
        """Until the run ends. The API may answer 5xx for a while (its database restarting in
        a fault test): such answers are waited out, within the same bound."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                run = self.client.dag_run(DAG, run_id)
            except AirflowError:
                run = {"state": "unknown (the API did not answer)"}
            if run["state"] in ("success", "failed"):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{run_id} still {run['state']} after {timeout:.0f}s")
            time.sleep(2)
        run["tasks"] = self.tasks(run_id)
        return run

    def wait_running(self, run_id: str, task_id: str, timeout: float = RUN_TIMEOUT) -> dict:
        """Until `task_id` of the run is running and its container has started (a DockerOperator
        task's container carries the run's and the task's labels); its task instance."""
        import docker

        engine = docker.from_env()
        labels = [f"io.conveyor.run_id={run_id}", f"io.conveyor.task_id={task_id}"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ti = self.tasks(run_id).get(task_id, {})
                state = self.client.dag_run(DAG, run_id)["state"]
            except AirflowError:  # its database just restarted: ask again
                time.sleep(1)
                continue
            if ti.get("state") == "running" and engine.containers.list(
                filters={"label": labels, "status": "running"}, ignore_removed=True
            ):
                return ti
            assert state in ("queued", "running"), f"{run_id} ended ({state}) before {task_id} ran"
            time.sleep(0.3)
        raise AssertionError(f"{task_id} of {run_id} did not start running within {timeout}s")

    def _run_path(self, run_id: str) -> str:
        return f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def run(self, day: str, conf: dict, name: str) -> dict:
        return self.wait(self.start(day, conf, name))

    def tasks(self, run_id: str) -> dict[str, dict]:
        data = self.client.request("GET", f"{self._run_path(run_id)}/taskInstances?limit=100")
        return {ti["task_id"]: ti for ti in data["task_instances"]}

    def xcom(self, run_id: str, task_id: str):
        data = self.client.request(
            "GET", f"{self._run_path(run_id)}/taskInstances/{task_id}/xcomEntries/return_value"
        )
        value = data["value"]
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return ast.literal_eval(value)  # a stringified Python dict
        return value

    def log(self, run_id: str, task_id: str, try_number: int) -> str:
        data = self.client.request(
            "GET",
            f"{self._run_path(run_id)}/taskInstances/{task_id}/logs/{try_number}?full_content=true",
        )
        content = data.get("content") if isinstance(data, dict) else data
        if isinstance(content, list):
            return "\n".join(_log_line(e) for e in content)
        return str(content)

    def clear(self, run_id: str, from_task: str) -> None:
        """Clear `from_task` and everything after it in that run: they run again."""
        self.client.request(
            "POST",
            f"/api/v2/dags/{DAG}/clearTaskInstances",
            {
                "dry_run": False,
                "dag_run_id": run_id,
                "task_ids": [from_task],
                "include_downstream": True,
                "only_failed": False,
                "reset_dag_runs": True,
            },
        )

    def rerun(self, run_id: str, from_task: str) -> dict:
        """Clear `from_task` and everything after it in that run, wait for the run again."""
        self.clear(run_id, from_task)
        return self.wait(run_id)

    def explain(self, run: dict) -> str:
        lines = [f"run {run['dag_run_id']}: {run['state']}"]
        for task_id, ti in run["tasks"].items():
            lines.append(f"  {task_id}: {ti['state']}")
            if ti["state"] in ("failed", "up_for_retry"):
                lines.append(self.log(run["dag_run_id"], task_id, ti["try_number"])[-2500:])
        return "\n".join(lines)


def _log_line(entry) -> str:
    """One structured log entry as text, with the exception Airflow 3 keeps in `error_detail`."""
    if not isinstance(entry, dict):
        return str(entry)
    text = str(entry.get("event", entry))
    for error in entry.get("error_detail") or []:
        frame = (error.get("frames") or [{}])[-1]
        text += (
            f"\n  {error.get('exc_type')}: {error.get('exc_value')}"
            f" (at {frame.get('filename')}:{frame.get('lineno')})"
        )
    return text


@pytest.fixture(scope="session", autouse=True)
def _swarm_starts_early(request) -> None:
    """When the session has Swarm tests, the Swarm starts with the first e2e test, in the
    background (it takes a minute; the runs before it need none)."""
    if any("test_swarm" in str(item.path) for item in request.session.items):
        request.getfixturevalue("local_swarm_starting")


@pytest.fixture(scope="session")
def runs(test_stack: TestStack) -> Runs:
    client = test_stack.airflow()
    client.wait_dag(DAG, timeout=180)
    client.set_paused(DAG, False)
    return Runs(client)


@pytest.fixture(scope="session")
def serving_url(test_stack: TestStack) -> str:
    return test_stack.url("SERVING_PORT")


@pytest.fixture(scope="session")
def data_aware_dags(test_stack: TestStack, runs: Runs) -> None:
    """`landing` and `monitor` unpaused, as `make up` does once per stack (the test stack starts
    with FIRST_RUN=0 and no clocks: their runs come from the tests)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/airflow_api.py"), "activate", "landing", "monitor"],
        env={**os.environ, "CONVEYOR_ENV_FILE": str(test_stack.env_file)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    paused = {d["dag_id"]: d["is_paused"] for d in runs.client.dags()}
    assert paused["landing"] is False and paused["monitor"] is False, paused


@pytest.fixture(scope="module")
def served(runs: Runs, serving_url: str) -> str:
    """The model version the gateway serves; when none is ready (a module run on its own on a
    fresh test stack), a first run deploys one."""
    try:
        return str(get_json(f"{serving_url}/ready")["model_version"])
    except OSError:
        run = runs.run("2026-02-01", {"force_deploy": True}, f"served-{uuid.uuid4().hex[:6]}")
        assert run["state"] == "success", runs.explain(run)
        return str(wait_serving_ready(serving_url)["model_version"])


@pytest.fixture(scope="session")
def record() -> dict:
    """One valid feature record (the demo generator's first row, target and ids dropped)."""
    import yaml

    from pipelines import demo

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    schema = params["schema"]
    frame = demo.generate(dt.date(2026, 3, 1), seed=1, rows=5)
    features = schema["numeric_features"] + schema["categorical_features"]
    row = frame[features].iloc[0]
    return {
        k: (None if v != v else (v.item() if hasattr(v, "item") else v)) for k, v in row.items()
    }


def upload_batch(stack: TestStack, day: str, prefix: str, mutate=None) -> str:
    """The demo batch of `day` as Parquet in the landing bucket; returns the source URI."""
    from pipelines import demo

    frame = demo.generate(dt.date.fromisoformat(day), seed=7, rows=3000)
    if mutate is not None:
        frame = mutate(frame)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    bucket = stack.env["S3_BUCKET_LANDING"]
    stack.s3().put_object(Bucket=bucket, Key=f"{prefix}/{day}.parquet", Body=buf.getvalue())
    return f"s3://{bucket}/{prefix}/{{date}}.parquet"


def wait_for(probe, timeout: float, what: str, interval: float = 3.0):
    """`probe()`'s first truthy value, asked every `interval` seconds for at most `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def prometheus_targets(stack: TestStack, job: str) -> dict[str, str]:
    """The health of each of the job's active targets, by container (or instance)."""
    prometheus = stack.url("PROMETHEUS_PORT")
    data = get_json(f"{prometheus}/api/v1/targets?state=active", timeout=10)
    return {
        t["labels"].get("container") or t["labels"].get("instance", ""): t["health"]
        for t in data["data"]["activeTargets"]
        if t["labels"].get("job") == job
    }


def timestamp(value: str | None) -> float | None:
    """An API timestamp (ISO 8601, `Z` or an offset) as Unix time."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def wait_serving_ready(serving_url: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get_json(f"{serving_url}/ready")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def model_versions(stack: TestStack, name: str) -> list[str]:
    query = urllib.parse.urlencode({"filter": f"name='{name}'", "max_results": 1000})
    data = get_json(f"{stack.url('MLFLOW_PORT')}/api/2.0/mlflow/model-versions/search?{query}")
    return sorted(v["version"] for v in data.get("model_versions", []))
