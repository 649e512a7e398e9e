"""The stack's Compose files as scripts/stack.sh merges them (airflow/docker-compose.yaml, then
airflow/compose.monitoring.yaml), rendered by `docker-compose config` from an env file that
scripts/stack_env.py made from .env.example (nothing started): the monitoring services join the
right networks, publish on BIND_ADDRESS only, a test stack gets its own names and free ports,
the Airflow services get the data-aware DAGs' settings, and every variable the monitoring needs
stops Compose, named, when it is unset.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker.toolchain import ROOT, read_env

pytestmark = pytest.mark.integration

COMPOSE = ROOT / ".venv" / "bin" / "docker-compose"
FILES = [
    "-f",
    str(ROOT / "airflow" / "docker-compose.yaml"),
    "-f",
    str(ROOT / "airflow" / "compose.monitoring.yaml"),
]
# What .build/*.env and stack.sh add to the stack's env file.
IMAGES = {
    name: f"conveyor/{name.lower()}:test"
    for name in (
        "AIRFLOW_IMAGE",
        "POSTGRES_IMAGE",
        "MLFLOW_IMAGE",
        "S3_IMAGE",
        "SOCKET_PROXY_IMAGE",
        "TRAIN_IMAGE",
        "SERVING_IMAGE",
        "SERVING_SKLEARN_IMAGE",
        "GATEWAY_IMAGE",
        "RELEASE_IMAGE",
        "PROMETHEUS_IMAGE",
        "ALERTMANAGER_IMAGE",
        "EXPORTERS_IMAGE",
    )
}
FROM_STACK_SH = {"CONVEYOR_HOST_PROJECT_DIR": str(ROOT), "DOCKER_GID": "999"}
# The settings of .env.example that only the monitoring (and the DAGs it adds) reads.
MONITORING_SETTINGS = (
    "PROMETHEUS_PORT",
    "ALERTMANAGER_PORT",
    "PROMETHEUS_SCRAPE_INTERVAL",
    "CONVEYOR_MONITORING_NETWORK",
    "CONVEYOR_DOCKER_SD_NETWORK",
    "CONVEYOR_PROMETHEUS_VOLUME",
    "CONVEYOR_ALERTMANAGER_VOLUME",
    "CONVEYOR_PUSHGATEWAY_VOLUME",
    "AIRFLOW_METRICS_DB_PASSWORD",
    "AIRFLOW_NOTES_USER",
    "AIRFLOW_NOTES_PASSWORD",
    "LANDING_KEY_TEMPLATE",
    "LANDING_SCHEDULE",
    "MONITOR_SCHEDULE",
)


def stack_env(tmp_path: Path, stack: str = "conveyor") -> dict[str, str]:
    out = tmp_path / f"{stack}.env"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stack_env.py"), "create", "--out", str(out),
         "--stack", stack],
        check=True, timeout=60,
    )  # fmt: skip
    return {**read_env(out), **IMAGES, **FROM_STACK_SH}


def render(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return subprocess.run(
        [str(COMPOSE), *FILES, "--env-file", str(env_file), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


def config_of(tmp_path: Path, env: dict[str, str]) -> dict:
    proc = render(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_env_example_names_every_monitoring_setting_and_the_secrets_are_generated(tmp_path):
    env = stack_env(tmp_path)
    assert set(MONITORING_SETTINGS) <= set(env)
    for secret in ("AIRFLOW_METRICS_DB_PASSWORD", "AIRFLOW_NOTES_PASSWORD"):
        assert len(env[secret]) >= 20, secret


def test_the_monitoring_services_and_their_networks(tmp_path):
    env = stack_env(tmp_path)
    config = config_of(tmp_path, env)
    services = config["services"]
    networks = {name: sorted(s.get("networks", {})) for name, s in services.items()}
    assert networks["prometheus"] == ["docker-sd", "monitoring", "serving", "tasks"]
    assert networks["docker-sd-proxy"] == ["docker-sd"]  # only Prometheus reaches it
    assert networks["airflow-exporter"] == ["backend", "monitoring"]
    assert networks["airflow-metrics-role"] == ["backend"]
    assert networks["pushgateway"] == ["monitoring", "tasks"]
    assert networks["alertmanager"] == ["monitoring"]
    assert networks["airflow-triggerer"] == ["backend", "tasks"]  # S3 for the landing sensor
    assert config["networks"]["docker-sd"]["internal"] is True
    assert config["networks"]["docker-sd"]["name"] == "conveyor-docker-sd"
    for name, setting in (("prometheus", "PROMETHEUS_PORT"), ("alertmanager", "ALERTMANAGER_PORT")):
        [port] = services[name]["ports"]
        assert port["host_ip"] == "127.0.0.1", port
        assert port["published"] == env[setting]
    for name in ("pushgateway", "airflow-exporter", "docker-sd-proxy"):
        assert "ports" not in services[name], name
    assert "/var/run/docker.sock" in str(services["docker-sd-proxy"]["volumes"])
    assert "docker-sd-proxy.cfg" in str(services["docker-sd-proxy"]["volumes"])
    assert services["airflow-exporter"]["depends_on"]["airflow-metrics-role"]["condition"] == (
        "service_completed_successfully"
    )
    assert "--expose-prometheus=/tmp/mlflow-metrics" in services["mlflow"]["command"]


def test_a_test_stack_gets_its_own_monitoring_names_and_free_ports(tmp_path):
    mine, test = stack_env(tmp_path), stack_env(tmp_path, "conveyor-tmonx")
    config = config_of(tmp_path, test)
    assert config["networks"]["monitoring"]["name"] == "conveyor-tmonx-monitoring"
    assert config["networks"]["docker-sd"]["name"] == "conveyor-tmonx-docker-sd"
    assert {v["name"] for k, v in config["volumes"].items() if "data" in k} >= {
        "conveyor-tmonx-prometheus",
        "conveyor-tmonx-alertmanager",
        "conveyor-tmonx-pushgateway",
    }
    assert config["services"]["prometheus"]["environment"]["SERVING_NETWORK"] == (
        "conveyor-tmonx-serving"
    )
    for port in ("PROMETHEUS_PORT", "ALERTMANAGER_PORT"):
        assert test[port] != mine[port], port


def test_the_airflow_services_get_the_dag_settings(tmp_path):
    env = stack_env(tmp_path)
    services = config_of(tmp_path, env)["services"]
    for name in ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        settings = services[name]["environment"]
        assert settings["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert settings["LANDING_KEY_TEMPLATE"] == env["LANDING_KEY_TEMPLATE"]
        assert settings["MONITOR_SCHEDULE"] == env["MONITOR_SCHEDULE"]
        assert settings["PROMETHEUS_URL"] == "http://prometheus:9090"
        assert settings["MLFLOW_UI_URL"] == f"http://127.0.0.1:{env['MLFLOW_PORT']}"
        users = settings["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
        assert users == f"{env['AIRFLOW_ADMIN_USER']}:admin,{env['AIRFLOW_NOTES_USER']}:user"


@pytest.mark.parametrize(
    "missing", [*MONITORING_SETTINGS, "PROMETHEUS_IMAGE", "ALERTMANAGER_IMAGE", "EXPORTERS_IMAGE"]
)
def test_a_missing_variable_is_named(tmp_path, missing):
    env = stack_env(tmp_path)
    del env[missing]
    proc = render(tmp_path, env)
    assert proc.returncode != 0
    assert missing in proc.stderr, proc.stderr
