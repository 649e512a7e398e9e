"""The environment the DAG files read at parse time, as Compose gives it to the Airflow
containers: the stack's Compose files (as scripts/stack.sh merges them) rendered by
`docker-compose config` from an env file scripts/stack_env.py made from .env.example. Every DAG
test parses the whole folder, so each sees the variables of every DAG file; Airflow's own
settings (AIRFLOW__*) are left out (the tests run Airflow on their own AIRFLOW_HOME).

`make test-dags` sets CONVEYOR_REQUIRE_AIRFLOW=1: there, a skipped test (apache-airflow or a
provider missing from the venv) or a session that passed nothing fails the run, so that the
target cannot pass by testing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = Path(sys.executable).parent / "docker-compose"
IMAGES = ("AIRFLOW", "POSTGRES", "MLFLOW", "S3", "SOCKET_PROXY", "SERVING", "SERVING_SKLEARN",
          "GATEWAY", "RELEASE", "PROMETHEUS", "ALERTMANAGER", "EXPORTERS")  # fmt: skip
TRAIN_IMAGE = "conveyor/train:0123456789ab"


def _airflow_environment() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / "stack.env"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "stack_env.py"), "create", "--out",
             str(env_file)],
            check=True, timeout=60,
        )  # fmt: skip
        with env_file.open("a") as fh:
            fh.writelines(f"{name}_IMAGE=conveyor/{name.lower()}:test\n" for name in IMAGES)
            fh.write(f"TRAIN_IMAGE={TRAIN_IMAGE}\nCONVEYOR_HOST_PROJECT_DIR=/srv/conveyor\n")
            fh.write("DOCKER_GID=999\n")
        proc = subprocess.run(
            [str(COMPOSE), "-f", str(ROOT / "airflow" / "docker-compose.yaml"),
             "-f", str(ROOT / "airflow" / "compose.monitoring.yaml"),
             "--env-file", str(env_file), "config", "--format", "json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    scheduler = json.loads(proc.stdout)["services"]["airflow-scheduler"]["environment"]
    return {k: v for k, v in scheduler.items() if not k.startswith("AIRFLOW__")}


STACK_ENV = _airflow_environment()


@pytest.fixture(autouse=True)
def _stack_env(monkeypatch):
    for key, value in STACK_ENV.items():
        monkeypatch.setenv(key, value)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CONVEYOR_REQUIRE_AIRFLOW") != "1" or exitstatus != 0:
        return
    stats = session.config.pluginmanager.get_plugin("terminalreporter").stats
    skipped, passed = len(stats.get("skipped", [])), len(stats.get("passed", []))
    if skipped or not passed:
        print(f"\ntest-dags: {passed} passed, {skipped} skipped: every DAG test must run here")
        session.exitstatus = 1
