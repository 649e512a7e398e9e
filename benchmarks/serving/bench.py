"""Conveyor's prediction server vs `mlflow models serve` on the project's demo model.

    python benchmarks/serving/bench.py [--duration 10] [--workdir /tmp/conveyor-bench]
    make bench

1. Trains the demo model once with the project's pipeline (ingest of the `demo` source,
   validate, train, params.yaml) into WORKDIR/models/model.
2. Serves it with each server, one worker each, pinned to the same core (`taskset -c 1`),
   with the load generator (`wrk`, Debian's package) pinned to the other core (`taskset -c 0`).
3. Prints one Markdown table: requests/s and p50/p99 latency at 1 and 32 connections for
   single-record requests, the time for a 1000-record batch, peak memory (RSS of the server's
   process tree) and cold start (spawn -> first successful prediction), and the in-process
   `predict_proba` time for the same batch.

Conveyor is measured on /predict and on /invocations (MLflow's request format, the same body
MLflow gets). Figures depend on the machine and its load: run it on an otherwise idle host.
Nothing here is asserted by the tests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
SERVER_CORE, CLIENT_CORE = "1", "0"


# -- the demo model ------------------------------------------------------------------------
def train_demo_model(workdir: Path) -> Path:
    """The project's pipeline on its demo source: ingest -> validate -> train."""
    model_dir = workdir / "models" / "model"
    if (model_dir / "MLmodel").exists():
        return model_dir
    sys.path.insert(0, str(ROOT))
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # a local sqlite store inside workdir
    from pipelines.config import load_params
    from pipelines.ingest import ingest
    from pipelines.train import train
    from pipelines.validate import validate

    params = load_params(ROOT / "params.yaml")
    params.ingest.source = "demo"
    for stage in (ingest, validate, train):
        print(f"bench: {stage.__name__} ...", file=sys.stderr)
        stage(params, workdir)
    return model_dir


def records(model_dir: Path, n: int) -> list[dict]:
    doc = json.loads((model_dir / "input_example.json").read_text())
    rows = [dict(zip(doc["columns"], r, strict=True)) for r in doc["data"]]
    rows = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows
    ]
    return [rows[i % len(rows)] for i in range(n)]


# -- processes -----------------------------------------------------------------------------
def tree_rss_kb(pid: int) -> int:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, AttributeError):
            continue
    return total


class Server:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int):
        self.name, self.cmd, self.env, self.port = name, cmd, env, port
        self.peak_kb = 0
        self._stop = threading.Event()

    def start(self, predict_path: str, body: bytes, timeout: float = 120) -> float:
        """Spawn; return seconds until the first successful prediction."""
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *self.cmd],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=open(Path(tempfile.gettempdir()) / f"bench-{self.name}.log", "w"),  # noqa: SIM115
            start_new_session=True,
        )
        threading.Thread(target=self._sample, daemon=True).start()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                status, _ = post(self.port, predict_path, body)
                if status == 200:
                    return time.perf_counter() - t0
            except OSError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"{self.name} gave no prediction within {timeout}s")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, tree_rss_kb(self.proc.pid))
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def post(port: int, path: str, body: bytes, conn: http.client.HTTPConnection | None = None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if own:
        conn.close()
    return resp.status, data


def batch_ms(port: int, path: str, body: bytes, n: int = 20) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times = []
    for _ in range(n + 2):
        t = time.perf_counter()
        status, data = post(port, path, body, conn)
        times.append(time.perf_counter() - t)
        if status != 200:
            raise RuntimeError(f"batch on {path}: {status} {data[:200]!r}")
    conn.close()
    return statistics.median(times[2:]) * 1000


WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}", "rb"):read("*a")
"""


def wrk(port: int, path: str, body: bytes, conns: int, duration: int, tmp: Path) -> dict:
    body_file = tmp / f"body-{port}-{path.strip('/')}.json"
    body_file.write_bytes(body)
    script = tmp / f"post-{port}-{path.strip('/')}.lua"
    script.write_text(WRK_LUA.format(body=body_file))
    cmd = [
        "taskset",
        "-c",
        CLIENT_CORE,
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{path}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    # wrk corrects for coordinated omission: one stall of S seconds at an interval of I
    # seconds adds about S/I samples, so a single pause can move p99; the max shows it.
    m = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    max_ms = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": rps,
        "p50": pct("50"),
        "p99": pct("99"),
        "max": max_ms,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


def in_process_ms(model_dir: Path, rows: list[dict], n: int = 20) -> float:
    import pandas as pd
    import skops.io

    path = str(model_dir / "model.skops")
    model = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
    df = pd.DataFrame(rows).astype({k: float for k, v in rows[0].items() if isinstance(v, float)})
    times = []
    for _ in range(n + 2):
        t = time.perf_counter()
        model.predict_proba(df)
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:]) * 1000


# -- main ----------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--cold-runs", type=int, default=5, help="extra cold starts to time")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "conveyor-bench"))
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: `{tool}` not found (Debian: apt-get install -y wrk util-linux)")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench: needs 2 CPUs (server on core 1, load generator on core 0)")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = train_demo_model(workdir)
    one = records(model_dir, 1)
    thousand = records(model_dir, 1000)
    single_predict = json.dumps(one[0]).encode()
    single_mlflow = json.dumps({"dataframe_records": one}).encode()
    batch_predict = json.dumps(thousand).encode()
    batch_mlflow = json.dumps({"dataframe_records": thousand}).encode()

    # The image build compiles the fast path next to the model (serving/model.Dockerfile).
    subprocess.run(
        [PYTHON, "-m", "serving.compile", str(model_dir)], cwd=ROOT, check=True, capture_output=True
    )

    servers = [
        ("conveyor /predict", "conveyor", "/predict", single_predict, batch_predict),
        ("conveyor /invocations", "conveyor", "/invocations", single_mlflow, batch_mlflow),
        ("mlflow models serve", "mlflow", "/invocations", single_mlflow, batch_mlflow),
    ]
    port = 18700
    conveyor_cmd = [PYTHON, "-m", "serving"]
    conveyor_env = {
        "MODEL_DIR": str(model_dir),
        "WEB_CONCURRENCY": "1",
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }
    mlflow_cmd = [
        str(VENV_BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        str(model_dir),
        "--env-manager",
        "local",
        "--workers",
        "1",
        "--host",
        "127.0.0.1",
    ]
    mlflow_env = {
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
    }
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    for label, kind, path, single, batch in servers:
        port += 1
        if kind == "conveyor":
            server = Server("conveyor", conveyor_cmd, {**conveyor_env, "PORT": str(port)}, port)
        else:
            server = Server("mlflow", [*mlflow_cmd, "-p", str(port)], mlflow_env, port)
        print(f"bench: {label} on :{port} ...", file=sys.stderr)
        cold = server.start(path, single)
        try:
            wrk(port, path, single, 8, 2, tmp)  # warm-up
            r1 = wrk(port, path, single, 1, args.duration, tmp)
            r32 = wrk(port, path, single, 32, args.duration, tmp)
            b = batch_ms(port, path, batch)
        finally:
            server.stop()
        rows.append(
            {
                "label": label,
                "cold": cold,
                "r1": r1,
                "r32": r32,
                "batch": b,
                "peak_mb": server.peak_kb / 1024,
            }
        )
    inproc = in_process_ms(model_dir, thousand)

    # cold start is noisy on a shared machine: a few more spawns of Conveyor's server
    colds = []
    for _ in range(args.cold_runs):
        port += 1
        server = Server("conveyor-cold", conveyor_cmd, {**conveyor_env, "PORT": str(port)}, port)
        colds.append(server.start("/predict", single_predict))
        server.stop()

    # cold start when no compiled fast path exists yet (sklearn imported, compiled at load)
    for cached in model_dir.glob("serving-fastpath.npz"):
        cached.unlink()
    port += 1
    scratch = Path(tempfile.mkdtemp(prefix="bench-nocache-"))
    server = Server(
        "conveyor-nocache",
        conveyor_cmd,
        {**conveyor_env, "PORT": str(port), "TMPDIR": str(scratch)},
        port,
    )
    cold_uncompiled = server.start("/predict", single_predict)
    server.stop()

    print(
        f"\nModel: project demo model ({model_dir}), "
        f"{len(one[0])} features; server on core {SERVER_CORE}, wrk on core {CLIENT_CORE}, "
        f"{args.duration}s per run, 1 worker each.\n"
    )
    head = (
        "| server | req/s c=1 | p50 / p99 ms c=1 | req/s c=32 | p50 / p99 ms c=32 "
        "| 1000-record batch ms | peak RSS MB | cold start s |"
    )
    print(head)
    print("|" + "---|" * 8)
    for r in rows:
        print(
            f"| {r['label']} | {r['r1']['rps']:.0f} | {r['r1']['p50']:.2f} / {r['r1']['p99']:.2f} "
            f"| {r['r32']['rps']:.0f} | {r['r32']['p50']:.2f} / {r['r32']['p99']:.2f} "
            f"| {r['batch']:.1f} | {r['peak_mb']:.0f} | {r['cold']:.2f} |"
        )
    print(
        "\nMax latency ms (c=1 / c=32): "
        + "; ".join(f"{r['label']} {r['r1']['max']:.1f} / {r['r32']['max']:.1f}" for r in rows)
    )
    print(f"\nIn-process sklearn predict_proba, 1000 records (DataFrame): {inproc:.1f} ms")
    print(f"Conveyor cold start without a pre-compiled fast path: {cold_uncompiled:.2f} s")
    if colds:
        print(
            f"Conveyor cold start over {len(colds)} more spawns: median "
            f"{statistics.median(colds):.2f} s, min {min(colds):.2f} s, max {max(colds):.2f} s"
        )
    ml = rows[-1]
    print("\nRatios vs mlflow models serve (target):")
    for r in rows[:-1]:
        print(
            f"- {r['label']}: req/s x{r['r1']['rps'] / ml['r1']['rps']:.1f} at c=1 and "
            f"x{r['r32']['rps'] / ml['r32']['rps']:.1f} at c=32 (>= 5); "
            f"p99 {r['r1']['p99'] / ml['r1']['p99']:.2f} / {r['r32']['p99'] / ml['r32']['p99']:.2f}"
            f" of MLflow's (<= 0.2); memory {r['peak_mb'] / ml['peak_mb']:.2f} (<= 0.33); "
            f"batch {r['batch'] / inproc:.2f}x in-process (<= 2)"
        )
    errors = [
        (r["label"], c, r[c])
        for r in rows
        for c in ("r1", "r32")
        if r[c]["non2xx"] or r[c]["socket_errors"]
    ]
    for label, c, res in errors:
        print(f"WARNING {label} {c}: non-2xx={res['non2xx']} {res['socket_errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
