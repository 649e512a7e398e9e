"""The `retrain` DAG end to end on the real stack, driven through Airflow's REST API only.

1. a first date: the run succeeds, serving (through the gateway on 127.0.0.1) answers with the
   model version the run registered;
2. a second date whose batch the test uploads to the landing bucket: the promoted model is
   deployed while an open-loop client sends requests throughout, none of which fails;
3. a run whose model cannot pass the gate (huge `min_improvement`): success, no deploy, serving
   unchanged;
4. a bad batch: quarantined by validate, everything downstream skipped, serving unchanged;
5. a deploy of an image that never becomes ready (`deploy_image`, the rollback/hotfix param,
   pointed at an image the test builds with a model directory that does not exist): the run
   fails, the new container is gone, the old model keeps answering without a failed request;
6. a run re-run from `ingest` for the same date: no new model version, no rebuilt image, no
   extra dataset file, the deploy a no-op.

The stack is started from nothing (`scripts/stack.sh clean`, then `up`) if it is not running, and
stopped again at the end in that case. Every wait is bounded.
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import tarfile
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

from scripts.airflow_api import AirflowClient, AirflowError, read_env_file
from tests.helpers.load import OpenLoopClient

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DAG = "retrain"
RUN_TIMEOUT = float(os.environ.get("E2E_RUN_TIMEOUT", "1500"))
DOWNSTREAM_OF_VALIDATE = ("train", "evaluate", "dvc_push", "register", "decide_deploy",
                          "build_serving_image", "deploy", "keep_current_model")


def _env() -> dict[str, str]:
    return {**read_env_file(), **os.environ}


def _stack(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "stack.sh"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "FIRST_RUN": "0", "UP_TIMEOUT": "480"})


def _airflow_up() -> bool:
    try:
        AirflowClient.from_env().health()
        return True
    except (AirflowError, OSError):
        return False


@pytest.fixture(scope="module")
def stack():
    """The stack on the current images (`make images` + `stack.sh up` are idempotent: only
    changed services are recreated); stopped at the end only if this test started it."""
    was_up = _airflow_up()
    if not was_up:
        # Volumes left by an earlier stack hold databases keyed to that stack's `.env`
        # secrets (a fresh clone generates new ones): start from nothing, as tests/stack does.
        _stack("clean", timeout=300)
    subprocess.run(["make", "-s", "images"], cwd=ROOT, check=True, timeout=1800)
    proc = _stack("up", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _serving_url_answers(), f"nothing answers on {_serving_url()}: {proc.stderr[-2000:]}"
    yield
    if not was_up:
        _stack("down", timeout=300)


def _serving_url() -> str:
    env = _env()
    return f"http://127.0.0.1:{env.get('SERVING_PORT') or 8000}"


def _serving_url_answers() -> bool:
    try:
        _get(f"{_serving_url()}/health")
        return True
    except OSError:
        return False


def _get(url: str, timeout: float = 5.0):
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _post(url: str, body, timeout: float = 10.0):
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class Runs:
    """Trigger `retrain` runs and read their task states, XComs and logs."""

    def __init__(self, client: AirflowClient):
        self.client = client
        self.tag = uuid.uuid4().hex[:8]

    def _run_path(self, run_id: str) -> str:
        return f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def run(self, day: str, conf: dict, name: str) -> dict:
        run_id = f"e2e-{self.tag}-{name}"
        self.client.trigger(DAG, f"{day}T00:00:00Z", conf, run_id=run_id)
        run = self.client.wait_run(DAG, run_id, timeout=RUN_TIMEOUT, poll=5)
        run["tasks"] = self.tasks(run_id)
        return run

    def tasks(self, run_id: str) -> dict[str, dict]:
        data = self.client.request("GET", f"{self._run_path(run_id)}/taskInstances?limit=100")
        return {ti["task_id"]: ti for ti in data["task_instances"]}

    def xcom(self, run_id: str, task_id: str):
        data = self.client.request(
            "GET", f"{self._run_path(run_id)}/taskInstances/{task_id}/xcomEntries/return_value")
        value = data["value"]
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return ast.literal_eval(value)  # a stringified Python dict
        return value

    def log(self, run_id: str, task_id: str, try_number: int) -> str:
        data = self.client.request(
            "GET", f"{self._run_path(run_id)}/taskInstances/{task_id}/logs/{try_number}"
                   "?full_content=true")
        content = data.get("content") if isinstance(data, dict) else data
        if isinstance(content, list):
            return "\n".join(str(e.get("event", e)) if isinstance(e, dict) else str(e)
                             for e in content)
        return str(content)

    def rerun(self, run_id: str, from_task: str) -> dict:
        """Clear `from_task` and everything after it in that run, wait for the run again."""
        self.client.request("POST", f"/api/v2/dags/{DAG}/clearTaskInstances", {
            "dry_run": False, "dag_run_id": run_id, "task_ids": [from_task],
            "include_downstream": True, "only_failed": False, "reset_dag_runs": True})
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


@pytest.fixture(scope="module")
def runs(stack) -> Runs:
    client = AirflowClient.from_env()
    client.wait_dag(DAG, timeout=180)
    client.set_paused(DAG, False)
    return Runs(client)


@pytest.fixture(scope="module")
def state() -> dict:
    return {}


@pytest.fixture(scope="module")
def record() -> dict:
    """One valid feature record (the demo generator's first row, target and ids dropped)."""
    import yaml

    from pipelines import demo

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    schema = params["schema"]
    frame = demo.generate(__import__("datetime").date(2026, 3, 1), seed=1, rows=5)
    features = schema["numeric_features"] + schema["categorical_features"]
    row = frame[features].iloc[0]
    return {k: (None if v != v else (v.item() if hasattr(v, "item") else v))
            for k, v in row.items()}


def _s3():
    import boto3
    from botocore.config import Config

    env = _env()
    return boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{env.get('S3_PORT') or 8333}",
        aws_access_key_id=env["S3_ACCESS_KEY_ID"],
        aws_secret_access_key=env["S3_SECRET_ACCESS_KEY"],
        region_name="us-east-1", config=Config(retries={"max_attempts": 3}))


def _upload_batch(day: str, prefix: str, mutate=None) -> str:
    """The demo batch of `day` as Parquet in the landing bucket; returns the source URI."""
    import datetime as dt

    from pipelines import demo

    frame = demo.generate(dt.date.fromisoformat(day), seed=7, rows=3000)
    if mutate is not None:
        frame = mutate(frame)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    bucket = _env().get("S3_BUCKET_LANDING") or "conveyor-landing"
    _s3().put_object(Bucket=bucket, Key=f"{prefix}/{day}.parquet", Body=buf.getvalue())
    return f"s3://{bucket}/{prefix}/{{date}}.parquet"


def _wait_serving_ready(timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _get(f"{_serving_url()}/ready")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def test_first_date_is_trained_registered_and_served(runs, state, record):
    run = runs.run("2026-03-01", {"force_deploy": True}, "first")
    assert run["state"] == "success", runs.explain(run)
    registration = runs.xcom(run["dag_run_id"], "register")
    assert registration["decision"] in ("promoted", "challenger", "already_champion")
    assert run["tasks"]["deploy"]["state"] == "success", runs.explain(run)
    version = str(registration["version"])
    build = runs.xcom(run["dag_run_id"], "build_serving_image")
    assert build["image"].endswith(f"-v{version}") and build["run_id"] == registration["run_id"]

    _wait_serving_ready()
    meta = _get(f"{_serving_url()}/metadata")
    assert str(meta["model_version"]) == version
    answer = _post(f"{_serving_url()}/predict", record)
    assert str(answer["model_version"]) == version
    assert len(answer["predictions"]) == 1
    state.update(version=version, image=build["image"])


def test_second_date_from_the_landing_bucket_deploys_with_zero_failed_requests(
        runs, state, record):
    assert state.get("version"), "needs the first run"
    source = _upload_batch("2026-03-02", f"e2e-{runs.tag}")
    # min_improvement -1: the gate promotes any candidate, so this run takes the promoted path.
    conf = {"source": source, "min_improvement": -1.0}
    with OpenLoopClient(f"{_serving_url()}/predict", record, rate=20,
                        max_requests=int(20 * RUN_TIMEOUT)) as load:
        run = runs.run("2026-03-02", conf, "second")
        time.sleep(2)
    result = load.result
    assert run["state"] == "success", runs.explain(run)
    registration = runs.xcom(run["dag_run_id"], "register")
    assert registration["decision"] == "promoted"
    new_version = str(registration["version"])
    assert new_version != state["version"]
    assert run["tasks"]["deploy"]["state"] == "success"
    assert result.sent > 100
    assert result.failures == [], f"{len(result.failures)} of {result.sent}: {result.failures[:5]}"
    assert state["version"] in result.versions and new_version in result.versions
    assert set(result.completed[-20:]) == {new_version}
    assert str(_get(f"{_serving_url()}/metadata")["model_version"]) == new_version
    state.update(version=new_version, image=runs.xcom(run["dag_run_id"],
                                                       "build_serving_image")["image"])


def test_a_model_that_fails_the_gate_is_not_deployed(runs, state):
    run = runs.run("2026-03-03", {"min_improvement": 1000.0}, "gate")
    assert run["state"] == "success", runs.explain(run)
    assert runs.xcom(run["dag_run_id"], "register")["decision"] == "challenger"
    tasks = run["tasks"]
    assert tasks["keep_current_model"]["state"] == "success"
    assert tasks["build_serving_image"]["state"] == "skipped"
    assert tasks["deploy"]["state"] == "skipped"
    assert str(_get(f"{_serving_url()}/metadata")["model_version"]) == state["version"]


def test_a_bad_batch_is_quarantined_and_nothing_downstream_runs(runs, state):
    def out_of_range(frame):
        frame = frame.copy()
        frame["age"] = 500  # validation.ranges.age is [16, 110]
        return frame

    source = _upload_batch("2026-03-04", f"e2e-{runs.tag}-bad", mutate=out_of_range)
    run = runs.run("2026-03-04", {"source": source}, "bad")
    assert run["state"] == "success", runs.explain(run)
    tasks = run["tasks"]
    assert tasks["ingest"]["state"] == "success"
    assert tasks["validate"]["state"] == "skipped", runs.explain(run)
    assert {t: tasks[t]["state"] for t in DOWNSTREAM_OF_VALIDATE} == {
        t: "skipped" for t in DOWNSTREAM_OF_VALIDATE}
    log = runs.log(run["dag_run_id"], "validate", tasks["validate"]["try_number"])
    assert "quarantine" in log and "age" in log
    assert str(_get(f"{_serving_url()}/metadata")["model_version"]) == state["version"]


def _unready_image(base: str) -> str:
    """The deployed image with a model directory that does not exist: it starts, never ready."""
    import docker

    tag = f"conveyor-e2e/unready:{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {base}\nENV MODEL_DIR=/nonexistent-model\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    docker.from_env().images.build(fileobj=buf, custom_context=True, tag=tag, pull=False,
                                   rm=True, labels={"io.conveyor.model.version": "999"})
    return tag


def test_an_image_that_never_becomes_ready_fails_the_run_and_the_old_model_serves_on(
        runs, state, record):
    import docker

    assert state.get("image"), "needs a deployed image"
    bad = _unready_image(state["image"])
    client = docker.from_env()
    try:
        conf = {"deploy_image": bad, "ready_timeout": 20, "min_improvement": 1000.0}
        with OpenLoopClient(f"{_serving_url()}/predict", record, rate=20,
                            max_requests=int(20 * RUN_TIMEOUT)) as load:
            run = runs.run("2026-03-05", conf, "unready")
        assert run["state"] == "failed", runs.explain(run)
        deploy = run["tasks"]["deploy"]
        assert deploy["state"] == "failed" and deploy["try_number"] == 1  # not retried
        log = runs.log(run["dag_run_id"], "deploy", 1)
        assert "not ready" in log and "old container keeps serving" in log
        assert client.containers.list(all=True, filters={"ancestor": bad}) == []
        assert load.result.failures == [], load.result.failures[:5]
        assert set(load.result.versions) == {state["version"]}
        assert str(_get(f"{_serving_url()}/metadata")["model_version"]) == state["version"]
        assert str(_post(f"{_serving_url()}/predict", record)["model_version"]) == state["version"]
    finally:
        for c in client.containers.list(all=True, filters={"ancestor": bad}):
            c.remove(force=True)
        client.images.remove(bad, force=True)


def _model_versions(name: str) -> list[str]:
    env = _env()
    query = urllib.parse.urlencode({"filter": f"name='{name}'", "max_results": 1000})
    data = _get(f"http://127.0.0.1:{env.get('MLFLOW_PORT') or 5000}"
                f"/api/2.0/mlflow/model-versions/search?{query}")
    return sorted(v["version"] for v in data.get("model_versions", []))


def _dataset_files() -> list[str]:
    """The versioned dataset on the workspace volume, read by a throwaway container."""
    import docker

    base = dict(line.split("=", 1) for line in
                (ROOT / ".build/base-images.env").read_text().split() if "=" in line)
    out = docker.from_env().containers.run(
        base.get("DEBIAN_IMAGE", "debian:bookworm-slim"), ["ls", "/w/data/dataset"],
        volumes={"conveyor-workspace": {"bind": "/w", "mode": "ro"}}, remove=True)
    return sorted(out.decode().split())


def test_rerunning_a_run_duplicates_no_data_model_version_or_image(runs, state):
    run = runs.run("2026-03-06", {"min_improvement": -1.0}, "rerun")
    assert run["state"] == "success", runs.explain(run)
    registration = runs.xcom(run["dag_run_id"], "register")
    build = runs.xcom(run["dag_run_id"], "build_serving_image")
    name = registration["model_name"]
    before = (_model_versions(name), _dataset_files())

    # Everything from ingest on, once more, for the same logical date.
    again = runs.rerun(run["dag_run_id"], "ingest")
    assert again["state"] == "success", runs.explain(again)
    assert again["tasks"]["ingest"]["try_number"] == 2
    registration2 = runs.xcom(run["dag_run_id"], "register")
    build2 = runs.xcom(run["dag_run_id"], "build_serving_image")
    deploy2 = runs.xcom(run["dag_run_id"], "deploy")
    assert (registration2["version"], registration2["run_id"]) == (
        registration["version"], registration["run_id"])
    assert build2["reused"] is True and build2["image_id"] == build["image_id"]
    assert deploy2["changed"] is False
    assert (_model_versions(name), _dataset_files()) == before
    assert "2026-03-06.parquet" in before[1]
    assert str(_get(f"{_serving_url()}/metadata")["model_version"]) == registration["version"]
