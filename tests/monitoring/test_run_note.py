"""The retrain run's note written through Airflow's REST API (dags/conveyor_summary.py) on the
project's Airflow image: an api-server with SimpleAuthManager, a user of role `user` (what the
notes user needs: edit DAG runs, nothing more), a run of a probe DAG. The note reads back as
written; a wrong password is refused and leaves the note alone.
"""

from __future__ import annotations

import json
import secrets
import sys

import httpx
import pytest

from tests.docker.toolchain import ROOT, wait_until
from tests.monitoring.containers import http_json

pytestmark = pytest.mark.docker

sys.path.insert(0, str(ROOT / "dags"))
from conveyor_summary import run_summary, set_run_note  # noqa: E402

PROBE_DAG = """
import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG("probe", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    EmptyOperator(task_id="noop")
"""


def test_the_summary_becomes_the_runs_note(airflow_image, containers, tmp_path):
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "probe.py").write_text(PROBE_DAG)
    admin, notes = secrets.token_hex(8), secrets.token_hex(8)
    passwords = tmp_path / "passwords.json"
    passwords.write_text(json.dumps({"admin": admin, "conveyor-notes": notes}))
    for path in (tmp_path, tmp_path / "dags", tmp_path / "dags" / "probe.py"):
        path.chmod(0o755)
    passwords.chmod(0o666)  # SimpleAuthManager opens it for append (field notes)
    api = containers.run(
        "airflow-api",
        airflow_image,
        "bash",
        "-c",
        "airflow db migrate >/dev/null && airflow dags reserialize >/dev/null 2>&1; "
        "exec airflow api-server",
        publish="8080",
        options=(
            "-v",
            f"{tmp_path / 'dags'}:/dags:ro",
            "-v",
            f"{passwords}:/opt/airflow/auth/passwords.json",
        ),
        env={
            "AIRFLOW__CORE__DAGS_FOLDER": "/dags",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,conveyor-notes:user",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "/opt/airflow/auth/passwords.json",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(24),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(24),
        },
    )
    base = f"http://127.0.0.1:{containers.port(api, '8080')}"

    def healthy():
        try:
            return http_json(f"{base}/api/v2/monitor/health")
        except OSError:
            return None

    wait_until(healthy, timeout=120, what=f"api-server ({containers.logs(api)[-800:]})")
    token = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": admin})
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    created = httpx.post(
        f"{base}/api/v2/dags/probe/dagRuns",
        headers=headers,
        json={"logical_date": None, "dag_run_id": "manual__probe"},
    )
    assert created.status_code == 200, created.text

    note = run_summary(
        date="2026-03-02",
        trigger={
            "trigger": "drift",
            "reason": "input drift on model conveyor v3: PSI age 0.400 > 0.2 over the last 1h",
        },
        registration={
            "model_name": "conveyor",
            "version": "4",
            "decision": "promoted",
            "metric": "roc_auc",
            "candidate_score": 0.81,
            "champion_score": 0.8,
            "min_improvement": 0.002,
            "run_id": "abc",
        },
        deploy={"changed": True, "model_version": "4", "container": "c4", "previous": "c3"},
        states={},
        mlflow_ui="http://127.0.0.1:5000",
    )
    set_run_note(base, "conveyor-notes", notes, "probe", "manual__probe", note)
    run_url = f"{base}/api/v2/dags/probe/dagRuns/manual__probe"
    assert httpx.get(run_url, headers=headers).json()["note"] == note

    with pytest.raises(httpx.HTTPStatusError) as refused:
        set_run_note(base, "conveyor-notes", "wrong", "probe", "manual__probe", "x")
    assert refused.value.response.status_code == 401
    assert httpx.get(run_url, headers=headers).json()["note"] == note
