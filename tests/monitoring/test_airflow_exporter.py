"""DAG-run and task outcomes from Airflow's metadata DB: the real schema (`airflow db migrate` from
the project's Airflow image into the Postgres stand-in), a small history written into it, the
exporter (docker/exporters, monitoring/airflow-queries.yaml) connected as the read-only role of
monitoring/airflow-metrics-role.sql, Prometheus scraping it with the project's rules.

- the queries load and give the history's numbers (last success, missed periods, the stuck run,
  the quarantined batch inside the 24 h window and not the older one, the heartbeat);
- the role reads those tables and nothing else (no connection secrets);
- Prometheus fires RetrainOverdue, RetrainRunStuck and BatchQuarantined on them, and not the
  scheduler alert.
"""

from __future__ import annotations

import re
import secrets

import pytest

from tests.docker.toolchain import docker, wait_until
from tests.monitoring.containers import ROOT, http_json, http_text, monitoring_path

pytestmark = pytest.mark.docker

HISTORY = ROOT / "tests" / "monitoring" / "data" / "airflow-history.sql"


def _psql(pg: str, *args: str, sql: str, user: str = "postgres", check: bool = True):
    return docker(
        "exec",
        "-i",
        pg,
        "psql",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        user,
        "-d",
        "airflow",
        *args,
        input=sql,
        check=check,
        timeout=60,
    )


def _metrics(text: str) -> dict[str, float]:
    """`name{labels}` -> value for the airflow_* series (the `server` label dropped)."""
    out = {}
    for line in text.splitlines():
        match = re.match(r"^(airflow_\w+)(\{[^}]*\})? (\S+)$", line)
        if match:
            labels = re.sub(r',?server="[^"]*"', "", match.group(2) or "").replace("{,", "{")
            out[match.group(1) + ("" if labels in ("", "{}") else labels)] = float(match.group(3))
    return out


def test_airflow_outcomes_reach_prometheus_and_fire_the_retrain_alerts(
    images, airflow_image, base_images, containers
):
    net = containers.network()
    password = secrets.token_hex(8)
    pg = containers.run(
        "postgres",
        base_images["POSTGRES_IMAGE"],
        network=net,
        env={"POSTGRES_PASSWORD": password, "POSTGRES_DB": "airflow"},
    )
    wait_until(
        lambda: (
            docker(
                "exec", pg, "pg_isready", "-h", "127.0.0.1", "-U", "postgres", check=False
            ).returncode
            == 0
        ),
        timeout=60,
        what="postgres ready",
    )
    docker(
        "run",
        "--rm",
        "--network",
        net,
        "-e",
        f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://postgres:{password}"
        f"@postgres:5432/airflow",
        airflow_image,
        "airflow",
        "db",
        "migrate",
        timeout=300,
    )
    _psql(pg, sql=HISTORY.read_text())
    metrics_password = secrets.token_hex(8)
    _psql(
        pg,
        "-v",
        f"password={metrics_password}",
        sql=monitoring_path("airflow-metrics-role.sql").read_text(),
    )

    # the role reads the four tables, not the connections (whose passwords live there)
    denied = _psql(pg, sql="SELECT count(*) FROM connection;", user="airflow_metrics", check=False)
    assert denied.returncode != 0 and "permission denied" in denied.stderr

    exporter = containers.run(
        "airflow-exporter",
        images["EXPORTERS_IMAGE"],
        "prometheus-postgres-exporter",
        "--extend.query-path=/etc/prometheus/airflow-queries.yaml",
        "--disable-default-metrics",
        "--disable-settings-metrics",
        "--web.listen-address=:9187",
        network=net,
        publish="9187",
        env={
            "DATA_SOURCE_URI": "postgres:5432/airflow?sslmode=disable",
            "DATA_SOURCE_USER": "airflow_metrics",
            "DATA_SOURCE_PASS": metrics_password,
        },
    )
    url = f"http://127.0.0.1:{containers.port(exporter, '9187')}/metrics"

    def scraped():
        try:
            return "airflow_dag_run_runs" in http_text(url)
        except OSError:
            return False

    wait_until(scraped, timeout=60, what=f"exporter metrics ({containers.logs(exporter)[-800:]})")
    text = http_text(url)
    assert (
        "pg_exporter_user_queries_load_error" in text and "pg_exporter_last_scrape_error 0" in text
    )
    m = _metrics(text)
    assert m['airflow_dag_scheduled_runs_since_success{dag_id="retrain"}'] == 2
    assert m['airflow_dag_scheduled_runs_since_success{dag_id="monitor"}'] == 0
    assert 4.9 * 3600 < m['airflow_dag_oldest_running_age_seconds{dag_id="retrain"}'] < 5.1 * 3600
    assert m['airflow_dag_run_runs{dag_id="retrain",state="failed"}'] == 2
    assert (
        m['airflow_task_instance_count{dag_id="retrain",state="skipped",task_id="validate"}'] == 2
    )
    quarantined = [k for k in m if k.startswith("airflow_quarantined_batch")]
    assert quarantined == [
        'airflow_quarantined_batch_end_timestamp_seconds{dag_id="retrain",'
        'run_id="manual__q-recent"}'
    ]
    assert m["airflow_scheduler_heartbeat_age_seconds"] < 60
    assert not any("old_dag" in k for k in m)  # stale DAGs are left out
    # last success: the manual run 3 days ago (the later ones quarantined or failed)
    last = m['airflow_dag_last_success_timestamp_seconds{dag_id="retrain"}']
    assert last < m['airflow_dag_last_success_timestamp_seconds{dag_id="monitor"}'] - 2.9 * 86400

    prometheus, prom_port = containers.prometheus(images["PROMETHEUS_IMAGE"], net)
    alerts_url = f"http://127.0.0.1:{prom_port}/api/v1/alerts"

    def firing() -> set[str]:
        try:
            alerts = http_json(alerts_url)["data"]["alerts"]
        except OSError:
            return set()
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}

    expected = {"RetrainOverdue", "RetrainRunStuck", "BatchQuarantined"}
    wait_until(
        lambda: expected <= firing(),
        timeout=90,
        interval=2,
        what=f"{expected} firing (firing now: {firing()})",
    )
    assert "AirflowSchedulerHeartbeatMissing" not in firing()
