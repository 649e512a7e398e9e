"""The real server process (`python -m serving`): pre-forked workers sharing the model and
their metrics, not-ready on SIGTERM, clean exit; slow clients cut off by the header and body
timeouts; a client that leaves mid-body recorded as 499."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def serve(model_dir: Path, compiled: Path, tmp_path: Path, **env: str) -> Iterator[tuple]:
    port = free_port()
    full = {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "COMPILED_DIR": str(compiled),
        "CACHE_DIR": str(tmp_path / "cache"),
        "WEB_CONCURRENCY": "1",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "TMPDIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    full.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving"], env=full, stderr=subprocess.PIPE, text=True
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
        yield proc, base, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


PARTIAL_BODY = (
    b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
    b"content-length: 100\r\n\r\n{"
)


def count(base: str, status: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=5).text
    m = re.search(
        rf'conveyor_http_requests_total\{{endpoint="/predict",method="POST",'
        rf'status="{status}"\}} (\S+)',
        text,
    )
    return float(m.group(1)) if m else 0.0


def test_prefork_workers_share_metrics_and_stop_cleanly(model_dir, compiled, tmp_path):
    with serve(
        model_dir, compiled(model_dir), tmp_path, WEB_CONCURRENCY="2", SHUTDOWN_DRAIN_SECONDS="1"
    ) as (proc, base, _):
        for _ in range(20):  # a new connection each: both workers take some
            assert requests.post(f"{base}/predict", json=record(), timeout=5).status_code == 200
        assert count(base, "200") == 20.0
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert requests.get(f"{base}/ready", timeout=2).status_code == 503  # draining
        assert proc.wait(timeout=30) == 0
        log = proc.stderr.read()
    assert log.count("Started server process") == 2
    assert "reporting not-ready" in log


def test_slow_clients_are_cut_off_and_leaving_clients_are_499(model_dir, compiled, tmp_path):
    # Cut off at 0.5 s: well inside the 5 s bound below (10x, a bound a loaded machine meets),
    # which the default header timeout (10 s) would miss.
    with serve(
        model_dir, compiled(model_dir), tmp_path, HEADER_TIMEOUT="0.5", BODY_TIMEOUT="1"
    ) as (_, base, port):
        idle = socket.create_connection(("127.0.0.1", port))  # sends nothing at all
        drip = socket.create_connection(("127.0.0.1", port))
        drip.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # headers never finish
        t0 = time.monotonic()
        for sock in (idle, drip):
            sock.settimeout(15)
            reply = sock.recv(4096)
            assert reply.startswith(b"HTTP/1.1 408"), reply
            assert sock.recv(4096) == b""  # and closed
        assert time.monotonic() - t0 < 5

        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(PARTIAL_BODY)
        slow.settimeout(5)
        assert slow.recv(4096).startswith(b"HTTP/1.1 408")

        gone = socket.create_connection(("127.0.0.1", port))
        gone.sendall(PARTIAL_BODY)
        time.sleep(0.2)
        gone.close()
        time.sleep(0.3)
        assert requests.get(f"{base}/health", timeout=2).status_code == 200
        assert count(base, "499") == 1.0 and count(base, "500") == 0.0
        for sock in (idle, drip, slow):
            sock.close()
