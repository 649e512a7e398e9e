"""The Compose stack, brought up from nothing with the same script as `make up`.

Checks: every service healthy; Airflow's REST API v2 with authentication, DAGs listed with no
import errors; an MLflow run with an artifact written through the artifact proxy and read back,
the object in the S3 bucket; the buckets; the socket proxy's filter; and `make down && make up`
keeping MLflow runs and Airflow history (Postgres stopped under a running task is
tests/e2e/test_faults.py's). Every wait is bounded.
It runs on the suite's own stack (`test_stack`: its own names and ports, removed at the end of
the session), never on the user's.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from scripts.airflow_api import AirflowClient, AirflowError

pytestmark = pytest.mark.e2e

SERVICES = {
    "postgres",
    "airflow-init",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "mlflow",
    "s3",
    "docker-socket-proxy",
    "serving",
    "gateway",
    # airflow/compose.monitoring.yaml
    "prometheus",
    "alertmanager",
    "pushgateway",
    "airflow-metrics-role",
    "airflow-exporter",
    "docker-sd-proxy",
}
ONE_SHOT = {"airflow-init", "airflow-metrics-role"}


def services(stack) -> dict[str, dict]:
    out = stack.compose("ps", "-a", "--format", "json", timeout=60).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
    if len(rows) == 0 and out.strip().startswith("["):  # older Compose: one JSON array
        rows = json.loads(out)
    return {row["Service"]: row for row in rows}


def not_healthy(rows: dict[str, dict]) -> dict[str, str]:
    bad = {}
    for name, row in rows.items():
        if name in ONE_SHOT:
            if not (row["State"] == "exited" and row.get("ExitCode") == 0):
                bad[name] = f"{row['State']} exit {row.get('ExitCode')}"
        elif not (row["State"] == "running" and row.get("Health") in ("healthy", "")):
            bad[name] = f"{row['State']} {row.get('Health')}"
    return bad


def wait_all_healthy(stack, timeout: float = 240) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = services(stack)
        bad = not_healthy(rows)
        if not bad and SERVICES <= rows.keys():
            return rows
        if time.monotonic() > deadline:
            pytest.fail(f"not healthy after {timeout}s: {bad}")
        time.sleep(5)


@pytest.fixture(scope="module")
def state(test_stack) -> dict:
    return {}


def test_every_service_is_healthy(test_stack):
    rows = wait_all_healthy(test_stack, timeout=60)
    assert SERVICES <= rows.keys()
    # Only the documented ports are published, on loopback.
    published = {
        (p["URL"], p["PublishedPort"])
        for row in rows.values()
        for p in row.get("Publishers") or []
        if p.get("PublishedPort")
    }
    assert {url for url, _ in published} == {"127.0.0.1"}
    ports = {
        int(test_stack.env[k])
        for k in (
            "AIRFLOW_PORT",
            "MLFLOW_PORT",
            "S3_PORT",
            "SERVING_PORT",
            "PROMETHEUS_PORT",
            "ALERTMANAGER_PORT",
        )
    }
    assert {port for _, port in published} == ports
    # Its own names: nothing of the stack is called like the user's (default) stack.
    names = {row["Name"] for row in rows.values()}
    assert all(
        n.startswith(test_stack.env["COMPOSE_PROJECT_NAME"] + "-")
        or n == test_stack.env["CONVEYOR_GATEWAY_CONTAINER"]
        for n in names
    ), names


def test_serving_answers_and_is_not_ready_before_a_champion(test_stack):
    base = test_stack.url("SERVING_PORT")
    with urllib.request.urlopen(f"{base}/health", timeout=10) as resp:
        assert resp.status == 200
    # The stack is fresh and the DAG paused (FIRST_RUN=0): no model is registered yet.
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(f"{base}/ready", timeout=10)
    assert not_ready.value.code == 503


def test_airflow_api_needs_auth_and_lists_dags_without_import_errors(test_stack):
    client = test_stack.airflow()
    with pytest.raises(AirflowError, match="401"):
        AirflowClient(client.url, "admin", "wrong-password").token()
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{client.url}/api/v2/dags", timeout=30)
    assert anonymous.value.code == 401
    assert client.health()["metadatabase"]["status"] == "healthy"
    client.wait_dag("retrain", timeout=120)
    assert client.import_errors() == []
    assert {d["dag_id"] for d in client.dags()} == {"retrain", "landing", "monitor"}


def test_buckets_exist_and_wrong_keys_are_refused(test_stack):
    e = test_stack.env
    names = {b["Name"] for b in test_stack.s3().list_buckets()["Buckets"]}
    assert {e["S3_BUCKET_DVC"], e["S3_BUCKET_MLFLOW"], e["S3_BUCKET_LANDING"]} <= names
    with pytest.raises(ClientError) as err:
        test_stack.s3(secret="not-the-secret").list_buckets()
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_mlflow_run_with_artifact_lands_in_the_bucket(test_stack, state, tmp_path):
    client = test_stack.mlflow()
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

    bucket = test_stack.env["S3_BUCKET_MLFLOW"]
    s3 = test_stack.s3()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    matching = [k for k in keys if run_id in k and k.endswith("notes/hello.txt")]
    assert matching, f"no object for run {run_id} in s3://{bucket}: {keys[:20]}"
    body = s3.get_object(Bucket=bucket, Key=matching[0])["Body"].read().decode()
    assert body == f"hello from {run_id}\n"
    state["run_id"] = run_id

    # Inside the stack the client's defaults apply (presigned download straight from s3).
    read_back = (
        "import sys, tempfile; from mlflow.tracking import MlflowClient\n"
        "path = MlflowClient('http://mlflow:5000').download_artifacts("
        "sys.argv[1], 'notes/hello.txt', tempfile.mkdtemp())\n"
        "print(open(path).read().strip())\n"
    )
    out = test_stack.compose(
        "exec",
        "-T",
        "-e",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES=1",
        "serving",
        "python",
        "-c",
        read_back,
        run_id,
        timeout=120,
    ).stdout
    assert out.strip().splitlines()[-1] == f"hello from {run_id}"


def test_socket_proxy_allows_task_api_and_refuses_the_rest(test_stack):
    """From the scheduler (where DockerOperator runs): the container API answers, exec, swarm,
    system and volume creation get 403."""
    probe = (
        "import json, sys, urllib.request\n"
        "def code(method, path, body=None):\n"
        "    req = urllib.request.Request(sys.argv[1] + path, method=method,"
        " data=None if body is None else json.dumps(body).encode(),"
        " headers={'Content-Type': 'application/json'})\n"
        "    try:\n"
        "        return urllib.request.urlopen(req, timeout=10).status\n"
        "    except urllib.error.HTTPError as e:\n"
        "        return e.code\n"
        "print(json.dumps({p: code(*p.split(' ', 1)) for p in sys.argv[2:]}))\n"
    )
    checks = [
        "GET /_ping",
        "GET /v1.41/version",
        "GET /v1.41/containers/json",
        "GET /v1.41/images/json",
        "POST /v1.41/containers/x/exec",
        "GET /v1.41/swarm",
        "GET /v1.41/system/df",
        "POST /v1.41/volumes/create",
        "POST /v1.41/images/create",
        "GET /v1.41/events",
    ]
    proxy = test_stack.env["CONVEYOR_DOCKER_HOST"].replace("tcp://", "http://")
    out = test_stack.compose(
        "exec", "-T", "airflow-scheduler", "python", "-c", probe, proxy, *checks, timeout=60
    ).stdout
    codes = json.loads(out.strip().splitlines()[-1])
    assert {p: c for p, c in codes.items() if p.startswith("GET /") and c == 200} == {
        p: 200 for p in checks[:4]
    }
    assert {p: codes[p] for p in checks[4:]} == {p: 403 for p in checks[4:]}


def test_down_and_up_keep_mlflow_runs_and_airflow_history(test_stack, state, tmp_path):
    client = test_stack.airflow()
    key = f"stack_test_{uuid.uuid4().hex[:8]}"
    client.request("POST", "/api/v2/variables", {"key": key, "value": "kept"}, ok=(201,))
    # A run of a paused DAG: recorded, never executed (`landing` is paused on a fresh stack).
    dag_id = "landing"
    assert [d for d in client.dags() if d["dag_id"] == dag_id][0]["is_paused"]
    run_id = client.trigger(dag_id, None, {}, run_id=f"stack_test_{key}")["dag_run_id"]

    test_stack.script("down", timeout=300)
    assert not [r for r in services(test_stack).values() if r["State"] == "running"]
    test_stack.script("up")
    wait_all_healthy(test_stack, timeout=60)

    client = test_stack.airflow()
    assert client.request("GET", f"/api/v2/variables/{key}")["value"] == "kept"
    assert client.dag_run(dag_id, run_id)["dag_run_id"] == run_id
    # Leave the DAG as it was: a DAG that has a run is one `make up` no longer unpauses.
    client.request("DELETE", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", ok=(204,))
    got = test_stack.mlflow().download_artifacts(state["run_id"], "notes/hello.txt", str(tmp_path))
    assert Path(got).read_text() == f"hello from {state['run_id']}\n"
