"""Shared by the e2e tests: the test stack's Airflow runs (trigger, tasks, XComs, logs, re-run),
HTTP helpers for the serving gateway, a valid record, batches uploaded to the landing bucket."""

from __future__ import annotations

import ast
import datetime as dt
import io
import json
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from scripts.airflow_api import AirflowClient
from tests.helpers.stack import TestStack

ROOT = Path(__file__).resolve().parents[2]
DAG = "retrain"
RUN_TIMEOUT = 1500.0


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
        run = self.client.wait_run(DAG, run_id, timeout=timeout, poll=2)
        run["tasks"] = self.tasks(run_id)
        return run

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

    def rerun(self, run_id: str, from_task: str) -> dict:
        """Clear `from_task` and everything after it in that run, wait for the run again."""
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
        run = self.client.wait_run(DAG, run_id, timeout=RUN_TIMEOUT, poll=5)
        run["tasks"] = self.tasks(run_id)
        return run

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
