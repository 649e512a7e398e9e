"""The serving images on the real engine: the lean image carries no pandas/sklearn/scipy/mlflow/
dvc; the bake (release.build) compiles, checks and picks the variant (lean for a
model that compiles, sklearn for one that does not); a baked model runs read-only, non-root,
without capabilities, ready through its HEALTHCHECK, with in-process predictions, survives the
worst bodies under MAX_BODY_BYTES within its production memory limit, and stops on SIGTERM under
load without failing a request; the sklearn variant compiles a mounted model once at start-up,
outside MODEL_DIR. Containers and images are labelled and removed by label."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from scripts.stack_env import EXAMPLE, read
from tests.serving.conftest import frame, load_reference, record

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
def images(project_images) -> dict[str, str]:
    return project_images


@pytest.fixture(scope="module")
def serving_image(images) -> str:
    return images["SERVING_IMAGE"]


def bake(images: dict[str, str], model_dir: Path, workspace: Path, version: str) -> dict:
    """The DAG's bake step, as the DAG runs it (CLI, JSON line out)."""
    (workspace / "models").mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, workspace / "models" / "model")
    (workspace / "reports").mkdir(exist_ok=True)
    (workspace / "reports" / "registration.json").write_text(
        json.dumps({"model_name": "churn", "version": version, "run_id": uuid.uuid4().hex})
    )
    repo = f"conveyor-test/serving-model-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "release.build",
            "--workspace",
            str(workspace),
            "--dockerfile",
            str(ROOT / "serving" / "model.Dockerfile"),
            "--repository",
            repo,
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "SERVING_IMAGE": images["SERVING_IMAGE"],
            "SERVING_SKLEARN_IMAGE": images["SERVING_SKLEARN_IMAGE"],
        },
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    BAKED.append(result["image"])  # the bake's own labels: removed by name, not by LABEL
    return result


BAKED: list[str] = []


@pytest.fixture(scope="module")
def model_image(images, model_dir, tmp_path_factory):
    result = bake(images, model_dir, tmp_path_factory.mktemp("ws"), "7")
    assert result["inference_path"] == "onnx" and result["variant_image"] == images["SERVING_IMAGE"]
    assert set(result) >= {"image", "image_id", "model_name", "model_version", "run_id", "reused"}
    yield result["image"]
    cleanup()
    for image in BAKED:
        docker("rmi", "-f", image, check=False)


def run(
    image: str, *env: str, start_period: str = "30s", mounts: list[str] | None = None
) -> tuple[str, str]:
    name = f"conveyor-test-{uuid.uuid4().hex[:10]}"
    args = ["run", "-d", "--name", name, "--label", LABEL, *HARDENING, "-p", "127.0.0.1::8000"]
    args += mounts or []
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


def test_lean_image_carries_only_the_compiled_path(serving_image):
    probe = (
        "import importlib.util as u; "
        "print(sorted(m for m in ('pandas', 'sklearn', 'scipy', 'mlflow', 'dvc', 'fastapi', "
        "'skl2onnx', 'onnx', 'pip') if u.find_spec(m)))"
    )
    assert docker("run", "--rm", "--entrypoint", "python", serving_image, "-c", probe) == "[]"


def test_bake_serves_an_unconvertible_model_with_the_sklearn_variant(
    images, unconvertible_dir, tmp_path
):
    result = bake(images, unconvertible_dir, tmp_path, "8")
    assert result["inference_path"] == "sklearn"
    assert result["variant_image"] == images["SERVING_SKLEARN_IMAGE"]
    assert "FunctionTransformer" in result["inference_note"]
    cid, base = run(result["image"])
    try:
        wait_health(cid, "healthy")
        meta = requests.get(f"{base}/metadata", timeout=5).json()
        assert meta["inference_path"] == "sklearn" and meta["model_version"] == "8"
        assert requests.post(f"{base}/predict", json=record(), timeout=5).status_code == 200
    finally:
        docker("rm", "-f", cid, check=False)


def test_sklearn_variant_compiles_a_mounted_model_once_outside_model_dir(images, family_dirs):
    model = family_dirs["rf"]
    cid, base = run(
        images["SERVING_SKLEARN_IMAGE"],
        "WEB_CONCURRENCY=1",
        mounts=["-v", f"{model}:/app/model:ro"],
        start_period="120s",
    )
    try:
        wait_health(cid, "healthy", timeout=180)
        meta = requests.get(f"{base}/metadata", timeout=5).json()
        assert meta["inference_path"] == "onnx", meta["inference_note"]
        listing = docker("exec", cid, "ls", "/tmp/conveyor-serving")
        assert len(listing.split()) == 1  # one compilation, by model fingerprint
    finally:
        docker("rm", "-f", cid, check=False)
    assert sorted(p.name for p in model.iterdir()) == sorted(
        [
            "MLmodel",
            "model.skops",
            "input_example.json",
            "serving_input_example.json",
            "requirements.txt",
            "python_env.yaml",
            "conda.yaml",
        ]
    )


def rss_kb(cid: str) -> int:
    status = docker("exec", cid, "cat", "/proc/1/status")
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def test_worst_bodies_cost_at_most_twice_the_idle_memory(model_image):
    limit = f"{read(EXAMPLE)['SERVING_MEMORY_MB']}m"  # what deploy runs it with (.env.example)
    cid, base = run(model_image, "WEB_CONCURRENCY=1", mounts=["--memory", limit])
    try:
        wait_health(cid, "healthy")
        requests.post(f"{base}/predict", json=[record()] * 100, timeout=10)
        idle = rss_kb(cid)
        size = 4 * 1024 * 1024 - 64  # MAX_BODY_BYTES's default, less the brackets
        fields = ", ".join(f'"{k}": "x"' for k in record())
        worst = {
            "empty objects": b"[" + b"{}," * (size // 3) + b"{}]",
            "empty lists": b"[" + b"[]," * (size // 3) + b"[]]",
            "zeros": b"[" + b"0," * (size // 2) + b"0]",
            "one long string": b'{"contract": "' + b"x" * size + b'"}',
            "deep nesting": b"[" * 100_000 + b"]" * 100_000,
            "5000 bad records": b"[" + b",".join([b"{" + fields.encode() + b"}"] * 5000) + b"]",
            "mlflow records": b'{"dataframe_records": [' + b"{}," * (size // 3) + b"{}]}",
        }
        stop = threading.Event()
        health: list[int | str] = []

        def probe() -> None:
            while not stop.is_set():
                try:
                    health.append(requests.get(f"{base}/health", timeout=5).status_code)
                except requests.RequestException as exc:
                    health.append(type(exc).__name__)
                time.sleep(0.2)

        prober = threading.Thread(target=probe)
        prober.start()
        peak = idle
        try:
            for name, body in worst.items():
                for path in ("/predict", "/invocations"):
                    resp = requests.post(
                        f"{base}{path}",
                        data=body,
                        timeout=60,
                        headers={"content-type": "application/json"},
                    )
                    assert 400 <= resp.status_code < 500, (name, path, resp.status_code)
                    assert len(resp.content) < 10_000, (name, path)
                    peak = max(peak, rss_kb(cid))
        finally:
            stop.set()
            prober.join(timeout=10)
        assert peak <= 2 * idle, f"RSS {peak} kB after the worst bodies, idle {idle} kB"
        assert health and all(code == 200 for code in health), health
        assert docker("inspect", "-f", "{{.RestartCount}} {{.State.OOMKilled}}", cid) == "0 false"
    finally:
        docker("rm", "-f", cid, check=False)


def test_serves_read_only_and_stops_gracefully_under_load(model_image, model_dir):
    cid, base = run(
        model_image, "WEB_CONCURRENCY=2", "SHUTDOWN_DRAIN_SECONDS=2", "GRACEFUL_TIMEOUT=5"
    )
    wait_health(cid, "healthy")
    host = json.loads(docker("inspect", cid))[0]["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert docker("exec", cid, "id", "-u") == "1000"
    meta = requests.get(f"{base}/metadata", timeout=5).json()
    assert (meta["model_name"], meta["model_version"]) == ("churn", "7")
    assert meta["inference_path"] == "onnx"
    reference = load_reference(model_dir)
    recs = [
        record(),
        record(**{"monthly_charges (usd)": None}),
        record(contract="annual", region="east"),
    ]
    body = requests.post(f"{base}/predict", json=recs, timeout=5).json()
    got = np.array(
        [[p["probabilities"][c] for c in ("churn", "stay")] for p in body["predictions"]]
    )
    np.testing.assert_allclose(got, reference.predict_proba(frame(recs)), atol=1e-6)

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
