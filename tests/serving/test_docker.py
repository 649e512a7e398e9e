"""The serving image on the real engine: baked model, read-only, non-root, no capabilities,
ready through its HEALTHCHECK, same predictions as in process, and a SIGTERM under load that
fails no request. Containers and images are labelled and removed by label."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.serving.conftest import frame, record

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
DOCKER = shutil.which("docker", path="/usr/bin") or "docker"
LABEL = "io.conveyor.test=serving"
HARDENING = [
    "--read-only",
    "--tmpfs",
    "/tmp:rw,size=64m",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
]


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed: {proc.stderr[-2000:]}")
    return proc.stdout.strip()


def logs(cid: str) -> str:
    proc = subprocess.run([DOCKER, "logs", cid], capture_output=True, text=True, timeout=30)
    return proc.stdout + proc.stderr


def cleanup() -> None:
    ids = docker("ps", "-aq", "--filter", f"label={LABEL}", check=False).split()
    if ids:
        docker("rm", "-f", *ids, check=False)
    images = docker("images", "-q", "--filter", f"label={LABEL}", check=False).split()
    if images:
        docker("rmi", "-f", *sorted(set(images)), check=False)


@pytest.fixture(scope="module")
def serving_image() -> str:
    env_file = ROOT / ".build" / "images.env"
    proc = subprocess.run(
        ["bash", "scripts/build-images.sh", "serving"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    images = dict(line.split("=", 1) for line in env_file.read_text().split() if "=" in line)
    return images["SERVING_IMAGE"]


@pytest.fixture(scope="module")
def model_image(serving_image, model_dir, tmp_path_factory):
    ctx = tmp_path_factory.mktemp("bake")
    shutil.copytree(model_dir, ctx / "model")
    tag = f"conveyor-test/serving-model:{uuid.uuid4().hex[:10]}"
    docker(
        "build",
        "-q",
        "-f",
        str(ROOT / "serving" / "model.Dockerfile"),
        "--build-arg",
        f"SERVING_IMAGE={serving_image}",
        "--build-arg",
        "MODEL_NAME=churn",
        "--build-arg",
        "MODEL_VERSION=7",
        "--label",
        LABEL,
        "-t",
        tag,
        str(ctx),
        timeout=600,
    )
    yield tag
    cleanup()


def run(image: str, *env: str, start_period: str = "30s") -> tuple[str, str]:
    args = ["run", "-d", "--label", LABEL, *HARDENING, "-p", "127.0.0.1::8000"]
    args += ["--health-interval", "1s", "--health-start-period", start_period]
    for item in env:
        args += ["-e", item]
    cid = docker(*args, image)
    port = docker("port", cid, "8000/tcp").splitlines()[0].rsplit(":", 1)[1]
    return cid, f"http://127.0.0.1:{port}"


def wait_health(cid: str, want: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = docker("inspect", "-f", "{{.State.Health.Status}}", cid)
        if status == want:
            return
        assert docker("inspect", "-f", "{{.State.Running}}", cid) == "true", logs(cid)
        time.sleep(0.5)
    raise AssertionError(f"health {status!r} != {want!r} after {timeout}s: {logs(cid)}")


def test_image_is_hardened_and_labelled(model_image):
    cfg = json.loads(docker("inspect", model_image))[0]["Config"]
    assert cfg["User"] == "1000:1000"
    assert cfg["Entrypoint"] == ["/app/serving/docker-entrypoint.sh"]
    assert cfg["Cmd"] == ["python", "-m", "serving"]
    assert "8000/tcp" in cfg["ExposedPorts"]
    assert cfg["Healthcheck"]["Test"] == ["CMD", "python", "-m", "serving.healthcheck"]
    assert cfg["Labels"]["io.conveyor.model.name"] == "churn"
    assert cfg["Labels"]["io.conveyor.model.version"] == "7"
    # the build-time CA never reaches the final image
    listing = docker("run", "--rm", "--entrypoint", "ls", model_image, "-a", "/tmp")
    assert "extra-ca" not in listing and "ca-bundle" not in listing


def test_serves_read_only_and_stops_gracefully_under_load(model_image, reference):
    cid, base = run(
        model_image, "WEB_CONCURRENCY=2", "SHUTDOWN_DRAIN_SECONDS=2", "GRACEFUL_TIMEOUT=5"
    )
    wait_health(cid, "healthy")
    host = json.loads(docker("inspect", cid))[0]["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert docker("exec", cid, "id", "-u") == "1000"
    meta = requests.get(f"{base}/metadata", timeout=5).json()
    assert (meta["model_name"], meta["model_version"]) == ("churn", "7")
    assert meta["predictor"] == "compiled-linear"

    recs = [record(), record(monthly_charges=None), record(contract="annual", region="east")]
    body = requests.post(f"{base}/predict", json=recs, timeout=5).json()
    got = np.array(
        [[p["probabilities"][c] for c in ("churn", "stay")] for p in body["predictions"]]
    )
    df = frame([{k: (np.nan if v is None else v) for k, v in r.items()} for r in recs])
    np.testing.assert_allclose(got, reference.predict_proba(df), atol=1e-9)

    # SIGTERM while clients send requests; they stop once /ready says 503, like a balancer.
    stop = threading.Event()
    results: list[tuple[int | str, float]] = []
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                code: int | str = session.post(f"{base}/predict", json=recs, timeout=10).status_code
            except requests.RequestException as exc:
                code = type(exc).__name__
            with lock:
                results.append((code, time.monotonic()))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    docker("kill", "--signal", "TERM", cid)
    signalled = time.monotonic()
    not_ready_after = None
    while time.monotonic() - signalled < 10:
        try:
            if requests.get(f"{base}/ready", timeout=2).status_code == 503:
                not_ready_after = time.monotonic() - signalled
                break
        except requests.RequestException:
            break
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    exit_code = docker("wait", cid, timeout=30)
    output = logs(cid)
    after = [code for code, at in results if at > signalled]
    failures = [code for code, _ in results if code != 200]
    assert not_ready_after is not None, f"/ready never said 503 after SIGTERM: {output[-2000:]}"
    assert failures == [], f"{len(failures)} failed requests: {failures[:5]}"
    assert len(results) > 50 and after, "no load around the signal"
    assert exit_code == "0", output[-2000:]
    assert "reporting not-ready" in output


def test_unloadable_model_stays_up_not_ready_with_the_reason(serving_image):
    cid, base = run(serving_image, start_period="1s")  # the plain image: no model
    deadline = time.monotonic() + 60
    resp = None
    while time.monotonic() < deadline:
        try:
            resp = requests.get(f"{base}/ready", timeout=2)
            break
        except requests.RequestException:
            time.sleep(0.5)
    assert resp is not None and resp.status_code == 503
    assert "no MLmodel file in /app/model" in resp.json()["reason"]
    assert requests.get(f"{base}/health", timeout=2).status_code == 200
    wait_health(cid, "unhealthy", timeout=30)
    assert docker("inspect", "-f", "{{.State.Running}} {{.RestartCount}}", cid) == "true 0"
    assert "NOT READY" in logs(cid)
    docker("rm", "-f", cid)
