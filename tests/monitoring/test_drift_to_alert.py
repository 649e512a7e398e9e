"""Drift from served counts to an alert, through the real parts: serving/traffic.py's counters
exposed over HTTP, scraped by the Prometheus image (the project's rules), the monitor stage reading
them with its PromQL against a local MLflow registry, pushing to the Pushgateway (exporters
image), and InputDrift firing for the drifting version only.

Two model versions (same reference profile) serve at once: v1 gets traffic drawn from the
training distribution, v2 shifted traffic. Prometheus and the Pushgateway run with host
networking, bound to 127.0.0.1, so they reach the test's HTTP server on the loopback.
"""

from __future__ import annotations

import datetime as dt
import json
import socket

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from pipelines import demo, monitor
from serving.traffic import TrafficAggregator
from tests.docker.toolchain import wait_until
from tests.monitoring.containers import http_json
from tests.pipelines.conftest import edit, repo_params
from tests.pipelines.test_monitor import NAME, train_and_register

pytestmark = pytest.mark.docker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(profile, frame):
    return json.loads(frame[list(profile["features"])].to_json(orient="records"))


def test_drifting_traffic_fires_input_drift_for_that_version(
    images, containers, tmp_path, monkeypatch
):
    import mlflow

    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "MODEL_NAME",
        "MONITOR_TRAFFIC_FILE",
        "CONVEYOR_IMAGE",
    ):
        monkeypatch.delenv(name, raising=False)
    params = edit(repo_params(rows=3000), {"register.model_name": NAME, "monitor.window": "1m"})
    v1, profile = train_and_register(tmp_path, params)

    first = mlflow.MlflowClient().get_model_version(NAME, v1)
    v2 = str(mlflow.register_model(first.source, NAME).version)  # same files
    v3 = str(mlflow.register_model(first.source, NAME).version)  # retired: served no longer

    traffic_port, push_port, prom_port = _free_port(), _free_port(), _free_port()
    registry = CollectorRegistry()
    served = {v: TrafficAggregator(profile, v, registry) for v in (v1, v2, v3)}
    # What each serving container exports beside its counts: v3's container was replaced, its
    # traffic of the window is still in Prometheus, but its model_info series is gone.
    info = Gauge("conveyor_model_info", "served", ["name", "version", "run_id", "inference_path"],
                 registry=registry)  # fmt: skip
    for version in (v1, v2):
        info.labels(NAME, version, "", "onnx").set(1)
    server, thread = start_http_server(traffic_port, addr="127.0.0.1", registry=registry)
    try:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": ["/etc/prometheus/rules/*.yml"],
                    "scrape_configs": [
                        {
                            "job_name": "serving",
                            "static_configs": [{"targets": [f"127.0.0.1:{traffic_port}"]}],
                        },
                        {
                            "job_name": "pushgateway",
                            "honor_labels": True,
                            "static_configs": [{"targets": [f"127.0.0.1:{push_port}"]}],
                        },
                    ],
                }
            )
        )
        tmp_path.chmod(0o755)
        config.chmod(0o644)
        host = ("--network", "host")
        containers.run(
            "pushgateway",
            images["EXPORTERS_IMAGE"],
            "prometheus-pushgateway",
            f"--web.listen-address=127.0.0.1:{push_port}",
            options=host,
        )
        containers.run(
            "prometheus",
            images["PROMETHEUS_IMAGE"],
            "--config.file=/test/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            options=(*host, "--entrypoint", "prometheus", "-v", f"{tmp_path}:/test:ro"),
        )
        prom = f"http://127.0.0.1:{prom_port}"

        def series(query: str) -> list:
            try:
                return http_json(f"{prom}/api/v1/query?query={query}")["data"]["result"]
            except OSError:
                return []

        # both versions' zeroed series are scraped before any record is served
        wait_until(
            lambda: len(series("conveyor_traffic_records_total")) == 3,
            timeout=60,
            what="the traffic counters in Prometheus",
        )
        served[v1].observe(
            _records(profile, demo.generate(dt.date(2026, 3, 20), seed=5, rows=1500))
        )
        shifted = demo.generate(dt.date(2026, 3, 20), seed=6, rows=1500)
        shifted["monthly_charges"] *= 2
        shifted["region"] = "atlantis"  # unknown category
        served[v2].observe(_records(profile, shifted))
        served[v3].observe(_records(profile, shifted))
        wait_until(
            lambda: all(
                float(s["value"][1]) >= 1500 for s in series("conveyor_traffic_records_total")
            ),
            timeout=30,
            what="the served records scraped",
        )

        monkeypatch.setenv("PROMETHEUS_URL", prom)
        monkeypatch.setenv("PUSHGATEWAY_URL", f"http://127.0.0.1:{push_port}")
        summary = monitor.monitor(params, tmp_path)
        verdicts = {r["model_version"]: r for r in summary["versions"]}
        assert set(verdicts) == {v1, v2, v3}, summary
        # v3 drifts too, and is newer, but only a served version's drift asks for a retrain
        assert verdicts[v3]["verdict"] == "drift" and not verdicts[v3]["serving"], summary
        assert verdicts[v1]["verdict"] == "ok" and verdicts[v2]["verdict"] == "drift", summary
        assert {f for f, v in verdicts[v2]["psi"].items() if v > params.monitor.psi_threshold} >= {
            "monthly_charges",
            "region",
        }
        assert verdicts[v1]["samples"] >= 1500 * 0.95  # increase() extrapolates a little
        assert summary["verdict"] == "drift" and summary["drift_version"] == v2

        def firing():
            try:
                alerts = http_json(f"{prom}/api/v1/alerts")["data"]["alerts"]
            except OSError:
                return []
            return [
                a["labels"]
                for a in alerts
                if a["labels"]["alertname"] == "InputDrift" and a["state"] == "firing"
            ]

        wait_until(lambda: firing(), timeout=60, what="InputDrift firing")
        assert {(a["model_version"], a["model_name"]) for a in firing()} == {(v2, NAME)}
        assert {a["feature"] for a in firing()} >= {"monthly_charges", "region"}
    finally:
        server.shutdown()
        thread.join(timeout=10)
