"""The Compose stack, brought up from nothing with the same script as `make up`.

Checks: every service healthy; Airflow's REST API v2 with authentication, DAGs listed with no
import errors; an MLflow run with an artifact written through the artifact proxy and read back,
the object in the S3 bucket; the buckets; the socket proxy's filter; a Postgres restart; and
`make down && make up` keeping MLflow runs and Airflow history. Every wait is bounded.
Leaves nothing behind: the stack is removed with its volumes at the end (`stack.sh clean`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from scripts.airflow_api import AirflowClient, AirflowError, read_env_file

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e

STACK = ["bash", str(ROOT / "scripts" / "stack.sh")]
CORE_SERVICES = {
    "postgres", "airflow-init", "airflow-api-server", "airflow-scheduler",
    "airflow-dag-processor", "mlflow", "s3", "docker-socket-proxy",
}


def run(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def stack(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    # FIRST_RUN=0: these tests check the platform, the DAG's own tests drive retrain runs.
    return run([*STACK, *args], timeout=timeout, env={"FIRST_RUN": "0", "UP_TIMEOUT": "480"})


def services() -> dict[str, dict]:
    out = stack("compose", "ps", "-a", "--format", "json", timeout=60).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
    if len(rows) == 0 and out.strip().startswith("["):  # older Compose: one JSON array
        rows = json.loads(out)
    return {row["Service"]: row for row in rows}


def not_healthy(rows: dict[str, dict]) -> dict[str, str]:
    bad = {}
    for name, row in rows.items():
        if name == "airflow-init":
            if not (row["State"] == "exited" and row.get("ExitCode") == 0):
                bad[name] = f"{row['State']} exit {row.get('ExitCode')}"
        elif not (row["State"] == "running" and row.get("Health") in ("healthy", "")):
            bad[name] = f"{row['State']} {row.get('Health')}"
    return bad


def wait_all_healthy(timeout: float = 240) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = services()
        bad = not_healthy(rows)
        if not bad and expected_services() <= rows.keys():
            return rows
        if time.monotonic() > deadline:
            pytest.fail(f"not healthy after {timeout}s: {bad}")
        time.sleep(5)


def serving_enabled() -> bool:
    images = read_env_file(ROOT / ".build" / "images.env")
    return bool(images.get("SERVING_IMAGE") and images.get("GATEWAY_IMAGE"))


def expected_services() -> set[str]:
    return CORE_SERVICES | ({"serving", "gateway"} if serving_enabled() else set())


def env() -> dict[str, str]:
    return read_env_file(ROOT / ".env")


def s3_client(key: str | None = None, secret: str | None = None):
    e = env()
    return boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{e.get('S3_PORT') or 8333}",
        aws_access_key_id=key or e["S3_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or e["S3_SECRET_ACCESS_KEY"],
        region_name="us-east-1", config=Config(retries={"max_attempts": 2}, connect_timeout=5),
    )


def airflow() -> AirflowClient:
    e = env()
    return AirflowClient(f"http://127.0.0.1:{e.get('AIRFLOW_PORT') or 8080}",
                         e.get("AIRFLOW_ADMIN_USER") or "admin", e["AIRFLOW_ADMIN_PASSWORD"])


def mlflow_client():
    # A dead server makes the client retry for minutes by default: keep failures fast.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "2"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "20"
    # From the host, downloads go through the server's proxy: its presigned S3 URLs name
    # http://s3:8333, which resolves inside the stack's networks only.
    os.environ["MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"] = "false"
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"http://127.0.0.1:{env().get('MLFLOW_PORT') or 5000}")


@pytest.fixture(scope="module")
def state():
    """The stack from nothing (no containers, no volumes), removed again at the end."""
    run(["make", "-s", "images"], timeout=1500)
    stack("clean", timeout=300)
    up = stack("up")
    assert "every service is healthy" in up.stderr
    shared: dict = {}
    yield shared
    stack("clean", timeout=300)


def test_every_service_is_healthy(state):
    rows = wait_all_healthy(timeout=60)
    assert expected_services() <= rows.keys()
    # Only the documented ports are published, on loopback.
    published = {
        (p["URL"], p["PublishedPort"])
        for row in rows.values() for p in row.get("Publishers") or [] if p.get("PublishedPort")
    }
    assert {url for url, _ in published} == {"127.0.0.1"}
    assert {port for _, port in published} >= {8080, 5000, 8333}
    assert 2375 not in {port for _, port in published}


def test_serving_answers_and_is_not_ready_before_a_champion(state):
    if not serving_enabled():
        pytest.skip("no serving/gateway image in .build/images.env")
    base = f"http://127.0.0.1:{env().get('SERVING_PORT') or 8000}"
    with urllib.request.urlopen(f"{base}/health", timeout=10) as resp:
        assert resp.status == 200
    # The stack is fresh and the DAG paused (FIRST_RUN=0): no model is registered yet.
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(f"{base}/ready", timeout=10)
    assert not_ready.value.code == 503


def test_airflow_api_needs_auth_and_lists_dags_without_import_errors(state):
    client = airflow()
    with pytest.raises(AirflowError, match="401"):
        AirflowClient(client.url, "admin", "wrong-password").token()
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{client.url}/api/v2/dags", timeout=30)
    assert anonymous.value.code == 401
    assert client.health()["metadatabase"]["status"] == "healthy"
    if (ROOT / "dags" / "retrain.py").exists():
        client.wait_dag("retrain", timeout=120)
    assert client.import_errors() == []
    assert isinstance(client.dags(), list)


def test_buckets_exist_and_wrong_keys_are_refused(state):
    e = env()
    names = {b["Name"] for b in s3_client().list_buckets()["Buckets"]}
    assert {e["S3_BUCKET_DVC"], e["S3_BUCKET_MLFLOW"], e["S3_BUCKET_LANDING"]} <= names
    with pytest.raises(ClientError) as err:
        s3_client(secret="not-the-secret").list_buckets()
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_mlflow_run_with_artifact_lands_in_the_bucket(state, tmp_path):
    client = mlflow_client()
    experiment_id = client.create_experiment(f"stack-test-{uuid.uuid4().hex[:8]}")
    run_ = client.create_run(experiment_id)
    run_id = run_.info.run_id
    client.log_param(run_id, "alpha", "0.5")
    client.log_metric(run_id, "score", 0.75)
    client.log_text(run_id, f"hello from {run_id}\n", "notes/hello.txt")
    client.set_terminated(run_id)

    got = Path(client.download_artifacts(run_id, "notes/hello.txt", str(tmp_path)))
    assert got.read_text() == f"hello from {run_id}\n"
    assert run_.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: no S3 keys needed

    bucket = env()["S3_BUCKET_MLFLOW"]
    keys = [o["Key"] for o in s3_client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    matching = [k for k in keys if run_id in k and k.endswith("notes/hello.txt")]
    assert matching, f"no object for run {run_id} in s3://{bucket}: {keys[:20]}"
    body = s3_client().get_object(Bucket=bucket, Key=matching[0])["Body"].read().decode()
    assert body == f"hello from {run_id}\n"
    state["run_id"] = run_id

    if serving_enabled():
        # Inside the stack the client's defaults apply (presigned download straight from s3).
        read_back = (
            "import sys, tempfile; from mlflow.tracking import MlflowClient\n"
            "path = MlflowClient('http://mlflow:5000').download_artifacts("
            "sys.argv[1], 'notes/hello.txt', tempfile.mkdtemp())\n"
            "print(open(path).read().strip())\n"
        )
        out = stack("compose", "exec", "-T", "-e", "MLFLOW_HTTP_REQUEST_MAX_RETRIES=1",
                    "serving", "python", "-c", read_back, run_id, timeout=120).stdout
        assert out.strip().splitlines()[-1] == f"hello from {run_id}"


def test_socket_proxy_allows_task_api_and_refuses_the_rest(state):
    """From the scheduler (where DockerOperator runs): the container API answers, exec, swarm,
    system and volume creation get 403."""
    probe = (
        "import json, sys, urllib.request\n"
        "def code(method, path, body=None):\n"
        "    req = urllib.request.Request('http://docker-socket-proxy:2375' + path, method=method,"
        " data=None if body is None else json.dumps(body).encode(),"
        " headers={'Content-Type': 'application/json'})\n"
        "    try:\n"
        "        return urllib.request.urlopen(req, timeout=10).status\n"
        "    except urllib.error.HTTPError as e:\n"
        "        return e.code\n"
        "print(json.dumps({p: code(*p.split(' ', 1)) for p in sys.argv[1:]}))\n"
    )
    checks = ["GET /_ping", "GET /v1.41/version", "GET /v1.41/containers/json",
              "GET /v1.41/images/json", "POST /v1.41/containers/x/exec", "GET /v1.41/swarm",
              "GET /v1.41/system/df", "POST /v1.41/volumes/create", "POST /v1.41/images/create",
              "GET /v1.41/events"]
    out = stack("compose", "exec", "-T", "airflow-scheduler", "python", "-c", probe, *checks,
                timeout=60).stdout
    codes = json.loads(out.strip().splitlines()[-1])
    assert {p: c for p, c in codes.items() if p.startswith("GET /") and c == 200} == {
        p: 200 for p in checks[:4]}
    assert {p: codes[p] for p in checks[4:]} == {p: 403 for p in checks[4:]}


def test_survives_a_postgres_restart(state):
    stack("compose", "restart", "postgres", timeout=120)
    wait_all_healthy(timeout=240)
    client = airflow()
    deadline = time.monotonic() + 120
    while True:  # pooled connections are re-established on their next use
        try:
            assert client.health()["metadatabase"]["status"] == "healthy"
            client.dags()
            break
        except (AirflowError, AssertionError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(5)
    assert mlflow_client().get_run(state["run_id"]).data.params["alpha"] == "0.5"


def test_down_and_up_keep_mlflow_runs_and_airflow_history(state, tmp_path):
    client = airflow()
    key = f"stack_test_{uuid.uuid4().hex[:8]}"
    client.request("POST", "/api/v2/variables", {"key": key, "value": "kept"}, ok=(201,))
    dag_ids = [d["dag_id"] for d in client.dags()]
    run_id = None
    if dag_ids:  # a run of a paused DAG: recorded, never executed
        dag_id = dag_ids[0]
        if not [d for d in client.dags() if d["dag_id"] == dag_id][0]["is_paused"]:
            client.set_paused(dag_id, True)
        run_id = client.trigger(dag_id, None, {}, run_id=f"stack_test_{key}")["dag_run_id"]

    stack("down", timeout=300)
    assert not [r for r in services().values() if r["State"] == "running"]
    stack("up")
    wait_all_healthy(timeout=60)

    client = airflow()
    assert client.request("GET", f"/api/v2/variables/{key}")["value"] == "kept"
    if run_id:
        assert client.dag_run(dag_id, run_id)["dag_run_id"] == run_id
    got = mlflow_client().download_artifacts(state["run_id"], "notes/hello.txt", str(tmp_path))
    assert Path(got).read_text() == f"hello from {state['run_id']}\n"
