"""Container healthcheck for every Airflow component of the Conveyor image.

`python healthcheck.py [component]` exits 0 when healthy, 1 otherwise (one line on stdout).
Without an argument the component is read from PID 1's command line, so one image HEALTHCHECK
serves the api-server, the scheduler, the dag-processor and the triggerer:

- api-server:    GET /api/v2/monitor/health answers 200 and the metadatabase is healthy.
- scheduler:     GET :8974/health answers 200 (AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=true).
- dag-processor, triggerer: its DagProcessorJob / TriggererJob row for this host heartbeated
  recently. One SQL query (~0.05 s) instead of `airflow jobs check`, which imports Airflow and
  costs ~4 s of CPU per call.
- anything else (the one-shot airflow-init): healthy.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request
from urllib.parse import unquote, urlsplit

HEARTBEAT_MAX_AGE_S = int(os.environ.get("CONVEYOR_HEARTBEAT_MAX_AGE", "90"))
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def component_of_pid1() -> str:
    try:
        with open("/proc/1/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return ""
    return next((arg for arg in argv if arg in COMPONENTS), "")


def http_ok(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode(errors="replace")
            return resp.status == 200, body
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
        return False, f"{type(exc).__name__}: {exc}"


def check_api_server() -> tuple[bool, str]:
    ok, body = http_ok("http://127.0.0.1:8080/api/v2/monitor/health")
    if not ok:
        return False, body
    status = json.loads(body).get("metadatabase", {}).get("status")
    return status == "healthy", f"metadatabase {status}"


def check_scheduler() -> tuple[bool, str]:
    return http_ok("http://127.0.0.1:8974/health")


def check_dag_processor() -> tuple[bool, str]:
    return check_job_heartbeat("DagProcessorJob")


def check_triggerer() -> tuple[bool, str]:
    return check_job_heartbeat("TriggererJob")


def check_job_heartbeat(job_type: str) -> tuple[bool, str]:
    import psycopg2  # the Postgres provider's driver, in the image's venv

    url = urlsplit(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    hosts = sorted({socket.getfqdn(), socket.gethostname()})
    conn = psycopg2.connect(
        host=url.hostname,
        port=url.port or 5432,
        user=unquote(url.username or ""),
        password=unquote(url.password or ""),
        dbname=url.path.lstrip("/"),
        connect_timeout=5,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT extract(epoch FROM now() - max(latest_heartbeat)) FROM job "
                "WHERE job_type = %s AND state = 'running' AND hostname = ANY(%s)",
                (job_type, hosts),
            )
            (age,) = cur.fetchone()
    finally:
        conn.close()
    if age is None:
        return False, f"no running {job_type} for {hosts}"
    return age <= HEARTBEAT_MAX_AGE_S, f"last heartbeat {age:.0f}s ago"


def main(argv: list[str]) -> int:
    component = argv[1] if len(argv) > 1 else component_of_pid1()
    checks = {
        "api-server": check_api_server,
        "scheduler": check_scheduler,
        "dag-processor": check_dag_processor,
        "triggerer": check_triggerer,
    }
    if component not in checks:
        print(f"healthy: nothing to probe for {component or 'this command'}")
        return 0
    try:
        ok, detail = checks[component]()
    except Exception as exc:  # noqa: BLE001
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    print(f"{component} {'healthy' if ok else 'UNHEALTHY'}: {detail}"[:300])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
