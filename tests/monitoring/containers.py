"""Helpers of the monitoring tests: uniquely named containers and networks, removed at the end;
small HTTP readers. Used by the fixtures in conftest.py and by the tests."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path

from tests.docker.toolchain import ROOT, docker

LABEL = "conveyor.test=tests-monitoring"
MONITORING = ROOT / "monitoring"


class Containers:
    """Start containers and networks under one unique prefix; remove them all at close()."""

    def __init__(self) -> None:
        self.prefix = f"conveyor-test-{uuid.uuid4().hex[:8]}"

    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def network(self, role: str = "net") -> str:
        name = self.name(role)
        docker("network", "create", "--label", LABEL, name)
        return name

    def run(
        self,
        role: str,
        image: str,
        *args: str,
        network: str | None = None,
        env: dict[str, str] | None = None,
        publish: str | None = None,
        options: tuple[str, ...] = (),
    ) -> str:
        """`docker run -d` a container named <prefix>-<role>; returns its name."""
        name = self.name(role)
        cmd = ["run", "-d", "--name", name, "--label", LABEL, *options]
        if network:
            cmd += ["--network", network, "--network-alias", role]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        if publish:
            cmd += ["-p", f"127.0.0.1::{publish}"]
        docker(*cmd, image, *args)
        return name

    def prometheus(self, image: str, network: str) -> tuple[str, int]:
        """The Prometheus image on `network` (2 s intervals, `network` as the serving network),
        its UI published on the loopback: (container name, port)."""
        name = self.run(
            "prometheus", image, network=network, publish="9090", env=prometheus_env(network, "2s")
        )
        return name, self.port(name, "9090")

    def port(self, name: str, private: str) -> int:
        """The loopback port Docker published for `private`."""
        out = docker("port", name, private).stdout.split()[0]
        return int(out.rsplit(":", 1)[1])

    def logs(self, name: str) -> str:
        proc = docker("logs", "--tail", "80", name, check=False)
        return proc.stdout + proc.stderr

    def close(self) -> None:
        for kind, ls in (("container", ["ps", "-aq"]), ("network", ["network", "ls", "-q"])):
            ids = docker(*ls, "--filter", f"name={self.prefix}", check=False).stdout.split()
            if ids:
                rm = ["rm", "-f", "-v"] if kind == "container" else ["network", "rm"]
                docker(*rm, *ids, check=False, timeout=60)


def prometheus_env(serving_network: str, interval: str) -> dict[str, str]:
    """The environment the Prometheus image's scrape config needs (the service names the stack
    gives the other monitoring containers)."""
    return {
        "PROMETHEUS_SCRAPE_INTERVAL": interval,
        "ALERTMANAGER_TARGET": "alertmanager:9093",
        "PROMETHEUS_DOCKER_HOST": "tcp://docker-sd-proxy:2375",
        "SERVING_NETWORK": serving_network,
        "SERVING_METRICS_PORT": "8000",
        "MLFLOW_TARGET": "mlflow:5000",
        "AIRFLOW_EXPORTER_TARGET": "airflow-exporter:9187",
        "PUSHGATEWAY_TARGET": "pushgateway:9091",
    }


def http_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def docker_gid() -> str:
    """Group owning the Docker socket (the socket proxy joins it)."""
    return str(os.stat("/var/run/docker.sock").st_gid)


def monitoring_path(*parts: str) -> Path:
    return MONITORING.joinpath(*parts)
