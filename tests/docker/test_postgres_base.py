"""The Postgres base image (the stand-in here, the official image where a registry answers)
honours what the official image's users rely on: POSTGRES_USER/PASSWORD/DB, init scripts on
first start only, password auth over TCP, pg_isready, data kept in a volume across a container
recreate, the server running as postgres, a clean exit on SIGTERM. The stand-in also runs under
the daemon default `no-new-privileges` that scripts/ensure-docker.sh sets on fresh machines."""

from __future__ import annotations

import uuid

import pytest

from tests.docker.toolchain import LABEL, docker, wait_until

pytestmark = pytest.mark.docker

USER, PASSWORD, DB = "conveyor_app", "s3cret-pw", "conveyor_db"


def start_postgres(image: str, name: str, volume: str, network: str, initdb=None) -> str:
    args = [
        "run", "-d", "--name", name, "--label", LABEL, "--network", network,
        "--security-opt", "no-new-privileges",
        "-e", f"POSTGRES_USER={USER}", "-e", f"POSTGRES_PASSWORD={PASSWORD}",
        "-e", f"POSTGRES_DB={DB}", "-v", f"{volume}:/var/lib/postgresql/data",
    ]  # fmt: skip
    if initdb is not None:
        args += ["-v", f"{initdb}:/docker-entrypoint-initdb.d:ro"]
    docker(*args, image)

    def ready() -> bool:
        probe = ["exec", name, "pg_isready", "-h", "127.0.0.1", "-p", "5432"]
        return docker(*probe, check=False, timeout=15).returncode == 0

    wait_until(ready, timeout=90, what=f"{name} to accept TCP connections")
    return name


def psql(image: str, network: str, host: str, sql: str, password: str = PASSWORD):
    """psql from another container: a TCP client, as the services are."""
    return docker(
        "run", "--rm", "--label", LABEL, "--network", network, "-e", f"PGPASSWORD={password}",
        "--entrypoint", "psql", image,
        "-h", host, "-U", USER, "-d", DB, "-tAc", sql, "-v", "ON_ERROR_STOP=1",
        check=False, timeout=60,
    )  # fmt: skip


def test_postgres_base_honours_the_official_contract(base_images, cleanup, tmp_path):
    image = base_images["POSTGRES_IMAGE"]
    tag = uuid.uuid4().hex[:8]
    network, volume = f"conveyor-test-pg-{tag}", f"conveyor-test-pg-{tag}"
    docker("network", "create", "--label", LABEL, network)
    docker("volume", "create", "--label", LABEL, volume)

    initdb = tmp_path / "initdb"
    initdb.mkdir()
    (initdb / "01-schema.sql").write_text("CREATE TABLE runs (id int PRIMARY KEY, note text);\n")
    (initdb / "02-seed.sh").write_text(
        '#!/bin/bash\nset -e\npsql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" '
        '--dbname "$POSTGRES_DB" -c "INSERT INTO runs VALUES (1, \'seeded by init script\')"\n'
    )
    initdb.chmod(0o755)
    for script in initdb.iterdir():
        script.chmod(0o644)

    first = start_postgres(image, f"conveyor-test-pg1-{tag}", volume, network, initdb)
    # Password auth over TCP: the right password gets in, a wrong one does not.
    out = psql(image, network, first, "SELECT current_user, current_database(), note FROM runs")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{USER}|{DB}|seeded by init script"
    wrong = psql(image, network, first, "SELECT 1", password="wrong")
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
    # The server runs as postgres, not root.
    status = docker("exec", first, "cat", "/proc/1/status").stdout
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert uid == docker("exec", first, "id", "-u", "postgres").stdout.strip() != "0"
    assert psql(image, network, first, "INSERT INTO runs VALUES (2, 'kept')").returncode == 0

    # SIGTERM: the server (PID 1) shuts down cleanly.
    docker("kill", "--signal", "TERM", first)
    docker("wait", first, timeout=60)
    state = docker("inspect", "-f", "{{.State.ExitCode}}", first).stdout.strip()
    assert state == "0", docker("logs", first, check=False).stderr[-2000:]
    docker("rm", first)

    # A new container on the same volume keeps the data and does not rerun the init scripts.
    second = start_postgres(image, f"conveyor-test-pg2-{tag}", volume, network, initdb)
    out = psql(image, network, second, "SELECT string_agg(note, ',' ORDER BY id) FROM runs")
    assert out.stdout.strip() == "seeded by init script,kept", out.stderr
    docker("stop", "-t", "30", second, timeout=60)
    assert docker("inspect", "-f", "{{.State.ExitCode}}", second).stdout.strip() == "0"
