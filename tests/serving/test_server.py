"""The real server process (`python -m serving`): pre-forked workers sharing the model and
their metrics, not-ready on SIGTERM, clean exit."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.serving.conftest import record

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prefork_workers_share_metrics_and_stop_cleanly(model_dir, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "WEB_CONCURRENCY": "2",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "SHUTDOWN_DRAIN_SECONDS": "1",
        "TMPDIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving"], env=env, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        else:
            pytest.fail("server not ready within 60 s")
        for _ in range(20):  # a new connection each: both workers take some
            resp = requests.post(f"{base}/predict", json=record(), timeout=5)
            assert resp.status_code == 200
        text = requests.get(f"{base}/metrics", timeout=5).text
        total = re.search(
            r'conveyor_http_requests_total\{endpoint="/predict",method="POST",status="200"\} (\S+)',
            text,
        )
        assert total and float(total.group(1)) == 20.0, text[:2000]
        assert "conveyor_model_info{" in text

        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert requests.get(f"{base}/ready", timeout=2).status_code == 503  # draining
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = proc.stderr.read()
    assert log.count("Started server process") == 2
    assert "reporting not-ready" in log
