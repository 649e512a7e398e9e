"""airflow/compose.monitoring.yaml merged after the main Compose file (`docker-compose config`,
nothing started): the monitoring services join the right networks, Prometheus and Alertmanager
publish on BIND_ADDRESS only, the Airflow services keep their own environment and gain the
data-aware DAGs' settings, and every variable the file needs stops Compose, named, when unset.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.docker.toolchain import ROOT

pytestmark = pytest.mark.integration

COMPOSE = ROOT / ".venv" / "bin" / "docker-compose"
FILES = [
    "-f",
    str(ROOT / "airflow" / "docker-compose.yaml"),
    "-f",
    str(ROOT / "airflow" / "compose.monitoring.yaml"),
]

# What the main file needs (set by stack.sh from .env and .build/*.env) ...
MAIN_ENV = {
    "AIRFLOW_FERNET_KEY": "k",
    "AIRFLOW_DB_PASSWORD": "p",
    "AIRFLOW_API_SECRET_KEY": "k",
    "AIRFLOW_JWT_SECRET": "k",
    "S3_ACCESS_KEY_ID": "k",
    "S3_SECRET_ACCESS_KEY": "k",
    "AIRFLOW_IMAGE": "conveyor/airflow:x",
    "POSTGRES_IMAGE": "conveyor-base/postgres:x",
    "POSTGRES_PASSWORD": "p",
    "MLFLOW_DB_PASSWORD": "p",
    "AIRFLOW_ADMIN_PASSWORD": "p",
    "MLFLOW_IMAGE": "conveyor/mlflow:x",
    "S3_IMAGE": "conveyor/s3:x",
    "SOCKET_PROXY_IMAGE": "conveyor/socket-proxy:x",
    "MLFLOW_PORT": "5000",
}
# ... and what the monitoring file adds (the rows for .env.example and .build/images.env).
MONITORING_ENV = {
    "PROMETHEUS_IMAGE": "conveyor/prometheus:x",
    "ALERTMANAGER_IMAGE": "conveyor/alertmanager:x",
    "EXPORTERS_IMAGE": "conveyor/exporters:x",
    "BIND_ADDRESS": "127.0.0.1",
    "PROMETHEUS_PORT": "9090",
    "ALERTMANAGER_PORT": "9093",
    "PROMETHEUS_SCRAPE_INTERVAL": "15s",
    "CONVEYOR_SERVING_NETWORK": "conveyor-serving",
    "SERVING_CONTAINER_PORT": "8000",
    "LANDING_KEY_TEMPLATE": "daily/{date}.csv",
    "LANDING_SCHEDULE": "@daily",
    "MONITOR_SCHEDULE": "*/30 * * * *",
    "AIRFLOW_NOTES_USER": "conveyor-notes",
    "AIRFLOW_NOTES_PASSWORD": "p",
    "AIRFLOW_METRICS_DB_PASSWORD": "p",
    "DOCKER_GID": "999",
    "CONVEYOR_PROMETHEUS_VOLUME": "conveyor-prometheus",
    "CONVEYOR_ALERTMANAGER_VOLUME": "conveyor-alertmanager",
    "CONVEYOR_PUSHGATEWAY_VOLUME": "conveyor-pushgateway",
    "CONVEYOR_MONITORING_NETWORK": "conveyor-monitoring",
    "CONVEYOR_DOCKER_SD_NETWORK": "conveyor-docker-sd",
}


def _config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return subprocess.run(
        [str(COMPOSE), *FILES, "--env-file", str(env_file), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


@pytest.fixture
def config(tmp_path) -> dict:
    proc = _config(tmp_path, {**MAIN_ENV, **MONITORING_ENV})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_monitoring_services_and_their_networks(config):
    services = config["services"]
    networks = {name: sorted(s.get("networks", {})) for name, s in services.items()}
    assert networks["prometheus"] == ["docker-sd", "monitoring", "serving", "tasks"]
    assert networks["docker-sd-proxy"] == ["docker-sd"]  # only Prometheus reaches it
    assert networks["airflow-exporter"] == ["backend", "monitoring"]
    assert networks["pushgateway"] == ["monitoring", "tasks"]
    assert networks["alertmanager"] == ["monitoring"]
    assert config["networks"]["docker-sd"]["internal"] is True
    assert config["networks"]["docker-sd"]["name"] == "conveyor-docker-sd"
    for name in ("prometheus", "alertmanager"):
        [port] = services[name]["ports"]
        assert port["host_ip"] == "127.0.0.1", port
    assert services["prometheus"]["ports"][0]["published"] == "9090"
    assert "/var/run/docker.sock" in str(services["docker-sd-proxy"]["volumes"])
    assert "docker-sd-proxy.cfg" in str(services["docker-sd-proxy"]["volumes"])


def test_the_airflow_services_gain_the_dag_settings_and_keep_theirs(config):
    for name in ("airflow-scheduler", "airflow-dag-processor"):
        env = config["services"][name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"  # the main file's, kept
        assert env["LANDING_KEY_TEMPLATE"] == "daily/{date}.csv"
        assert env["MONITOR_SCHEDULE"] == "*/30 * * * *"
        assert env["PROMETHEUS_URL"] == "http://prometheus:9090"
        assert env["MLFLOW_UI_URL"] == "http://127.0.0.1:5000"


@pytest.mark.parametrize("missing", sorted(MONITORING_ENV))
def test_a_missing_variable_is_named(tmp_path, missing):
    env = {**MAIN_ENV, **MONITORING_ENV}
    del env[missing]
    proc = _config(tmp_path, env)
    assert proc.returncode != 0
    assert missing in proc.stderr, proc.stderr
