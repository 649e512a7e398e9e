"""Conveyor's prediction server vs `mlflow models serve`, on every model family.

    python benchmarks/serving/bench.py [--duration 5] [--workdir /tmp/conveyor-bench]
    make bench

Models: logistic regression trained by the project's pipeline on its demo data; a
HistGradientBoosting and a RandomForest pipeline (impute + scale, ColumnTransformer) on
scikit-learn's bundled breast-cancer and wine tables (column names with spaces and
parentheses); and a RandomForest regressor saved the plain way (`mlflow.sklearn.save_model`
with a numpy input example: a tensor signature), as most existing MLflow models are.
Each model is compiled as the bake does (serving.convert) and served by each server, one worker
each, pinned to the same core (`taskset -c 1`), with the load generator (`wrk`) on the other.
Printed per model: requests/s and p50/p99 at 1 and 32 connections (single records; the median
of three wrk runs each), a 1000-record batch (/predict: a list of records; /invocations and
MLflow: the body MLflow's own client sends, `dataframe_split`, or `inputs` for the tensor model,
made by MLflow's `dump_input_data`: NaN for a missing number),
peak RSS, cold start (spawn -> first prediction), the in-process sklearn `predict_proba`/`predict`
time for the same 1000 records (pinned to the servers' core), and the ratios against the targets.
The raw-ASGI ceiling (uvicorn + httptools answering a fixed body, no model) is printed as the
limit, and, when nginx is installed, the native one (nginx `return 200`): the machine's own
tail. Figures depend on the machine and its load: the load average is printed with them.
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


def bundled_models(workdir: Path) -> dict[str, Path]:
    """The other three models (module docstring), saved once into WORKDIR/models/."""
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = {}
    specs = {
        "hgb (breast cancer)": (load_breast_cancer, HistGradientBoostingClassifier(max_iter=100)),
        "rf (wine)": (load_wine, RandomForestClassifier(n_estimators=200, random_state=0)),
    }
    for label, (loader, estimator) in specs.items():
        path = workdir / "models" / label.split()[0]
        out[label] = path
        if (path / "MLmodel").exists():
            continue
        data = loader(as_frame=True)
        X = data.data.copy()
        X.columns = [f"{c} (x)" if i % 3 == 0 else c for i, c in enumerate(X.columns)]
        X.iloc[::17, 0] = np.nan
        numeric = Pipeline(
            [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
        )
        pre = ColumnTransformer([("numeric", numeric, list(X.columns))])
        model = Pipeline([("preprocess", pre), ("estimator", estimator)]).fit(X, data.target)
        _save(
            model,
            path,
            X,
            signature=infer_signature(X, model.predict(X)),
            metadata={"task": "classification"},
        )
        (path / "bench_rows.json").write_text(X.head(200).to_json(orient="records"))
    path = workdir / "models" / "tensor"
    out["rf regressor (tensor)"] = path
    if not (path / "MLmodel").exists():
        X, y = load_diabetes(return_X_y=True)
        model = make_pipeline(RandomForestRegressor(n_estimators=100, max_depth=8, random_state=0))
        model.fit(X, y)
        _save(model, path, X)  # the plain way: a numpy input example, a tensor signature
        (path / "bench_rows.json").write_text(json.dumps(X[:200].tolist()))
    return out


def _save(model, path: Path, X, **kwargs) -> None:
    import mlflow.sklearn
    import skops.io

    probe = path.parent / f"{path.name}.probe.skops"
    path.parent.mkdir(parents=True, exist_ok=True)
    skops.io.dump(model, probe)
    trusted = skops.io.get_untrusted_types(file=str(probe)) or None
    probe.unlink()
    mlflow.sklearn.save_model(
        model,
        str(path),
        input_example=X[:3],
        skops_trusted_types=trusted,
        pip_requirements=[],
        **kwargs,
    )


def mlflow_body(rows: list) -> bytes:
    """The body MLflow's own client sends, made by its own `dump_input_data`: a DataFrame as
    `dataframe_split` (with its index; a missing number as NaN), an array as `inputs`."""
    import numpy as np
    import pandas as pd
    from mlflow.utils.proto_json_utils import dump_input_data

    if isinstance(rows[0], dict):
        return dump_input_data(pd.DataFrame(rows)).encode()
    return dump_input_data(np.array(rows, dtype=np.float64)).encode()


def bench_rows(model_dir: Path, n: int) -> list:
    """n records (dicts, or lists for a tensor model), NaN as null, cycling the sample."""
    sample = model_dir / "bench_rows.json"
    if sample.exists():
        rows = json.loads(sample.read_text())
    else:
        doc = json.loads((model_dir / "input_example.json").read_text())
        rows = [dict(zip(doc["columns"], r, strict=True)) for r in doc["data"]]

    def clean(v):
        return None if isinstance(v, float) and v != v else v

    rows = [
        {k: clean(v) for k, v in r.items()} if isinstance(r, dict) else [clean(v) for v in r]
        for r in rows
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


IN_PROCESS = """
import json, statistics, sys, time
import numpy as np
import pandas as pd
from serving.artifact import read_artifact
from serving.convert import load_estimator

model_dir, rows_file = sys.argv[1], sys.argv[2]
rows = json.load(open(rows_file))
model = load_estimator(read_artifact(model_dir))
if isinstance(rows[0], dict):
    X = pd.DataFrame(rows)
    for col in X.columns:
        if X[col].dtype == object and all(v is None or isinstance(v, (int, float)) for v in X[col]):
            X[col] = X[col].astype(float)
else:
    X = np.array(rows, dtype=float)
fn = model.predict_proba if hasattr(model, "predict_proba") else model.predict
times = []
for _ in range(22):
    t = time.perf_counter()
    fn(X)
    times.append(time.perf_counter() - t)
print(statistics.median(times[2:]) * 1000)
"""


def in_process_ms(model_dir: Path, rows: list, tmp: Path) -> float:
    """sklearn's own predict_proba (classifiers) or predict on the same records, in a process
    pinned to the servers' core (sklearn's OpenMP would otherwise use both)."""
    rows_file = tmp / f"inproc-{model_dir.name}.json"
    rows_file.write_text(json.dumps(rows))
    out = subprocess.run(
        ["taskset", "-c", SERVER_CORE, PYTHON, "-c", IN_PROCESS, str(model_dir), str(rows_file)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


CEILING_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})
"""


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 '{{}}'; }}
    }}
}}
"""


REPEATS = 3  # wrk runs per figure: the median of each, so one stall of a shared core is not it


def median_run(port: int, path: str, body: bytes, conns: int, duration: int, tmp: Path) -> dict:
    runs = [wrk(port, path, body, conns, duration, tmp) for _ in range(REPEATS)]
    out = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99", "max")}
    out["non2xx"] = sum(r["non2xx"] for r in runs)
    out["socket_errors"] = " ".join(r["socket_errors"] for r in runs if r["socket_errors"])
    return out


def measure(
    server: Server, path: str, single: bytes, batch: bytes | None, duration: int, tmp: Path
) -> dict:
    cold = server.start(path, single)
    try:
        wrk(server.port, path, single, 8, 2, tmp)  # warm-up
        r1 = median_run(server.port, path, single, 1, duration, tmp)
        r32 = median_run(server.port, path, single, 32, duration, tmp)
        b = batch_ms(server.port, path, batch) if batch else float("nan")
    finally:
        server.stop()
    return {"cold": cold, "r1": r1, "r32": r32, "batch": b, "peak_mb": server.peak_kb / 1024}


# -- main ----------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--cold-runs", type=int, default=3, help="extra cold starts to time")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "conveyor-bench"))
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: `{tool}` not found (Debian: apt-get install -y wrk util-linux)")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench: needs 2 CPUs (server on core 1, load generator on core 0)")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    models = {"lr (demo data)": train_demo_model(workdir), **bundled_models(workdir)}
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    port = 18700

    # the raw-ASGI ceiling: uvicorn + httptools answering a fixed body, no model
    (tmp / "ceiling.py").write_text(CEILING_APP)
    port += 1
    ceiling_cmd = [
        PYTHON,
        "-m",
        "uvicorn",
        "ceiling:app",
        "--app-dir",
        str(tmp),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "off",
    ]
    ceiling = measure(
        Server("ceiling", ceiling_cmd, {}, port), "/", b"{}", None, args.duration, tmp
    )

    # the native ceiling: nginx answering `return 200`, no Python at all (when installed)
    native = None
    if shutil.which("nginx"):
        port += 1
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port))
        native_cmd = ["nginx", "-e", str(tmp / "nginx-error.log"), "-c", str(conf)]
        native = measure(
            Server("nginx", native_cmd, {}, port), "/", b"{}", None, args.duration, tmp
        )

    results = []
    for label, model_dir in models.items():
        compiled = workdir / "compiled" / model_dir.name
        proc = subprocess.run(
            [PYTHON, "-m", "serving.convert", str(model_dir), str(compiled)],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        conversion = json.loads(proc.stdout.strip().splitlines()[-1])
        one, thousand = bench_rows(model_dir, 1), bench_rows(model_dir, 1000)
        tensor = not isinstance(one[0], dict)
        bodies = {
            "/predict": (
                json.dumps(one[0] if not tensor else one).encode(),
                json.dumps(thousand).encode(),
            ),
            "/invocations": (mlflow_body(one), mlflow_body(thousand)),
        }
        env = {
            "MODEL_DIR": str(model_dir),
            "COMPILED_DIR": str(compiled),
            "CACHE_DIR": str(tmp / "cache"),
            "WEB_CONCURRENCY": "1",
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT),
        }
        rows = []
        for path in ("/predict", "/invocations"):
            port += 1
            server = Server("conveyor", [PYTHON, "-m", "serving"], {**env, "PORT": str(port)}, port)
            print(f"bench: {label}: conveyor {path} on :{port} ...", file=sys.stderr)
            rows.append(
                (f"conveyor {path}", measure(server, path, *bodies[path], args.duration, tmp))
            )
        port += 1
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
            "-p",
            str(port),
        ]
        mlflow_env = {"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
        print(f"bench: {label}: mlflow models serve on :{port} ...", file=sys.stderr)
        rows.append(
            (
                "mlflow models serve",
                measure(
                    Server("mlflow", mlflow_cmd, mlflow_env, port),
                    "/invocations",
                    *bodies["/invocations"],
                    args.duration,
                    tmp,
                ),
            )
        )
        colds = []
        for _ in range(args.cold_runs):
            port += 1
            server = Server(
                "conveyor-cold", [PYTHON, "-m", "serving"], {**env, "PORT": str(port)}, port
            )
            colds.append(server.start("/predict", bodies["/predict"][0]))
            server.stop()
        results.append(
            {
                "label": label,
                "rows": rows,
                "inproc": in_process_ms(model_dir, thousand, tmp),
                "path": conversion["path"],
                "colds": colds,
            }
        )
    load_after = os.getloadavg()
    report(results, ceiling, native, args, load_before, load_after)
    return 0


def report(results, ceiling, native, args, load_before, load_after) -> None:
    print(
        f"\nServer on core {SERVER_CORE}, wrk on core {CLIENT_CORE}, median of {REPEATS} runs of "
        f"{args.duration}s, 1 worker each; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after."
    )
    r1, r32 = ceiling["r1"], ceiling["r32"]
    print(
        f"Raw-ASGI ceiling (uvicorn + httptools, fixed body, no model): "
        f"{r1['rps']:.0f} req/s at c=1 (p50 / p99 {r1['p50']:.2f} / {r1['p99']:.2f} ms), "
        f"{r32['rps']:.0f} at c=32 ({r32['p50']:.2f} / {r32['p99']:.2f} ms): no server on this "
        "machine answers faster or with a shorter tail."
    )
    if native is None:
        print("Native ceiling: nginx not installed (Debian: apt-get install -y nginx-light).\n")
    else:
        r1, r32 = native["r1"], native["r32"]
        print(
            f"Native ceiling (nginx `return 200`, no Python): {r1['rps']:.0f} req/s at c=1 "
            f"(p50 / p99 {r1['p50']:.2f} / {r1['p99']:.2f} ms), {r32['rps']:.0f} at c=32 "
            f"({r32['p50']:.2f} / {r32['p99']:.2f} ms): the machine's own tail.\n"
        )
    head = (
        "| model (path) | server | req/s c=1 | p50 / p99 ms c=1 | req/s c=32 | p50 / p99 ms c=32 "
        "| 1000-record batch ms | in-process ms | peak RSS MB | cold start s |"
    )
    print(head)
    print("|" + "---|" * 10)
    for res in results:
        for name, r in res["rows"]:
            print(
                f"| {res['label']} ({res['path']}) | {name} | {r['r1']['rps']:.0f} "
                f"| {r['r1']['p50']:.2f} / {r['r1']['p99']:.2f} | {r['r32']['rps']:.0f} "
                f"| {r['r32']['p50']:.2f} / {r['r32']['p99']:.2f} | {r['batch']:.1f} "
                f"| {res['inproc']:.1f} | {r['peak_mb']:.0f} | {r['cold']:.2f} |"
            )
    print("\nAgainst the targets (conveyor /predict, /invocations vs mlflow models serve):")
    for res in results:
        ml = res["rows"][-1][1]
        for name, r in res["rows"][:-1]:
            print(
                f"- {res['label']} {name}: req/s x{r['r1']['rps'] / ml['r1']['rps']:.0f} (c=1), "
                f"x{r['r32']['rps'] / ml['r32']['rps']:.0f} (c=32) [>= 10]; p99 "
                f"{r['r1']['p99'] / ml['r1']['p99']:.3f} / {r['r32']['p99'] / ml['r32']['p99']:.3f}"
                f" of MLflow's [<= 0.1]; RSS {r['peak_mb'] / ml['peak_mb']:.2f} [<= 0.25]; "
                f"cold start {r['cold']:.2f} s, median of {len(res['colds'])} more "
                f"{statistics.median(res['colds']):.2f} s [<= 1]; batch "
                f"{r['batch'] / res['inproc']:.2f}x in-process [<= 1]"
            )
    for res in results:
        for name, r in res["rows"]:
            for c in ("r1", "r32"):
                if r[c]["non2xx"] or r[c]["socket_errors"]:
                    print(
                        f"WARNING {res['label']} {name} {c}: non-2xx={r[c]['non2xx']} "
                        f"{r[c]['socket_errors']}"
                    )


if __name__ == "__main__":
    sys.exit(main())
