"""airflow/compose.celery.yaml merges over the stack as designed (`docker-compose config`, no
stack started): every Airflow service on the CeleryExecutor, two workers reaching Docker
through the socket proxy, Redis. The Celery tests on a running stack are in
tests/e2e/test_workers_celery_e2e.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OVERRIDE = ROOT / "airflow" / "compose.celery.yaml"
WORKERS = ("airflow-worker-1", "airflow-worker-2")


@pytest.mark.unit
def test_the_override_puts_every_airflow_service_on_celery(tmp_path):
    # .env.example's settings (secrets filled), the images, the override's own secret.
    pairs = (
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    settings = {k.strip(): v.strip() or "x" for k, v in pairs}
    # Every image variable the build knows (scripts/build-images.sh's table) and the bases.
    table = (ROOT / "scripts" / "build-images.sh").read_text()
    names = re.findall(r'^  "[\w-]+\|[^|]+\|(\w+)\|\w+"$', table, flags=re.M)
    names += ["PYTHON_IMAGE", "POSTGRES_IMAGE", "DEBIAN_IMAGE"]
    images = {name: f"conveyor/{name.lower()}:test" for name in names}
    secrets = {**settings, "REDIS_PASSWORD": "x", "CONVEYOR_HOST_PROJECT_DIR": str(ROOT)}
    proc = subprocess.run(
        [
            str(ROOT / ".venv/bin/docker-compose"),
            "-f",
            str(ROOT / "airflow/docker-compose.yaml"),
            "-f",
            str(OVERRIDE),
            "config",
            "--format",
            "json",
        ],
        env={"PATH": os.environ["PATH"], **secrets, **images},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    airflow = {n: s for n, s in services.items() if s.get("image") == images["AIRFLOW_IMAGE"]}
    assert set(airflow) == {
        "airflow-init",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        *WORKERS,
    }
    for name, service in airflow.items():
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://:x@redis:6379/0", name
    for name in WORKERS:
        worker = services[name]
        assert worker["command"] == ["airflow", "celery", "worker"]
        assert worker["hostname"] == name
        assert "serving" in worker["networks"]  # the socket proxy's network
        assert worker["environment"]["DOCKER_HOST"] == settings["CONVEYOR_DOCKER_HOST"]
        assert {"redis", "docker-socket-proxy"} <= set(worker["depends_on"])
    assert services["redis"]["environment"]["REDIS_PASSWORD"] == "x"
    assert "ports" not in services["redis"]
