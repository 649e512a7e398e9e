"""The daily run's cost as history piles up, with and without a training window.

    python benchmarks/pipeline/bench.py [--days 1,30,300,1000] [--families all] [--workdir DIR]
                                        [--big-rows 1000000] [--no-window-cap random_forest=300]
    make bench-pipeline

For each history length (days of the demo source, 3,000 rows a day) a DVC workspace is made as
the DAG makes it (`python -m pipelines.workspace prepare`, a local DVC remote, DVC's state on
the workspace), holding that many validated days, committed and pushed. Then the next day's run
is measured command by command, exactly as the DAG's tasks run them (`workspace run ... -- dvc
repro <stage>`, validate directly, `dvc push`), once per model family and per window:
`train.window` 30 days, then `all`. Each command's wall time, CPU time (user + system, with
its children) and peak resident memory come from wait4(2); the stages' own JSON summaries give
the memory checks (pipelines/memory.py) the bytes-per-cell table is computed from.

The families: logistic_regression, random_forest and hist_gradient_boosting on the demo's
classification target; ridge on a regression target of the same data (monthly_charges). A
last workspace holds a single day of `--big-rows` rows, ingested from a CSV file.

Runs without a window that would take hours are capped (`--no-window-cap family=days`, default
random_forest at 300 days): their cells say "capped". MLflow is the pipeline's default local
store (SQLite in the workspace). One OpenMP thread (as the tests), so that figures on a shared
2-core machine are not dominated by threads waiting for each other; the load average is printed
with the tables. Nothing here is asserted by the tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
sys.path.insert(0, str(ROOT))
# This process stays small and imports no pandas: a child started by vfork inherits the
# parent's high-water mark as its own peak RSS (the kernel records it at exec), so the data
# the benchmark makes is made by child processes of this script (`--make ...`).


FIRST_DAY = dt.date(2026, 1, 1)
DAY_ROWS = 3000
WINDOW = "30 days"
CLASSIFIERS = ("logistic_regression", "random_forest", "hist_gradient_boosting")
REGRESSORS = ("ridge",)
STAGES = ("ingest", "validate", "train", "evaluate", "dvc_push", "register")
MIB = 1 << 20


# ----------------------------------------------------------------------------- params
def schema_params(task: str, source: str = "demo") -> dict:
    """The repo's params.yaml, for the classification target or a regression one."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ingest"].update(source=source, date=FIRST_DAY.isoformat())
    raw["ingest"]["demo"]["rows"] = DAY_ROWS
    if task == "regression":
        raw["schema"].update(task="regression", target="monthly_charges")
        raw["schema"]["numeric_features"].remove("monthly_charges")
        raw["validation"]["ranges"].pop("monthly_charges")
    return raw


def source_dir(workdir: Path, task: str, source: str = "demo") -> Path:
    """What the training image's /app holds: dvc.yaml, pipelines/ and this params.yaml."""
    name = f"app-{task}" if source == "demo" else f"app-{task}-file"
    app = workdir / name
    if app.exists():
        shutil.rmtree(app)
    app.mkdir(parents=True)
    shutil.copyfile(ROOT / "dvc.yaml", app / "dvc.yaml")
    shutil.copytree(ROOT / "pipelines", app / "pipelines", ignore=shutil.ignore_patterns("__py*"))
    (app / "params.yaml").write_text(yaml.safe_dump(schema_params(task, source), sort_keys=False))
    return app


# ----------------------------------------------------------------------------- history
def make_history(root: Path, params_file: Path, days: int) -> None:
    """`days` validated demo days, made by the stages themselves (in this child process)."""
    from pipelines.config import load_params
    from pipelines.data import dataset_dir
    from pipelines.ingest import ingest
    from pipelines.validate import validate

    params = load_params(params_file)
    folder = root / dataset_dir(params)
    have = len(list(folder.glob("*.parquet"))) if folder.exists() else 0
    for i in range(have, days):
        params.ingest.date = FIRST_DAY + dt.timedelta(days=i)
        if i % 100 == 0:
            log(f"history {params_file.parent.name}: day {i + 1} of {days}")
        ingest(params, root)
        validate(params, root)
    print(folder)


def history(workdir: Path, app: Path, task: str, days: int) -> Path:
    """The dataset folder of `days` demo days (made once, in a child process)."""
    root = workdir / f"history-{task}"
    cmd = [str(VENV_BIN / "python"), __file__, "--make-history", str(root), str(app), str(days)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=environment())
    return Path(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- commands
@dataclass
class Cost:
    wall: float = 0.0
    cpu: float = 0.0
    peak: int = 0  # bytes
    summary: dict = field(default_factory=dict)

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.wall + other.wall, self.cpu + other.cpu, max(self.peak, other.peak))


def environment() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "AWS_", "DVC_")) and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS="1",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        DVC_NO_ANALYTICS="1",
    )
    return env


def measure(cmd: list[str], cwd: Path, env: dict[str, str]) -> Cost:
    """Run `cmd`; its wall time, CPU time and peak RSS (children included, from wait4) and
    the JSON summary it printed last."""
    start = time.monotonic()
    with open(os.devnull, "wb") as null:
        out_path = cwd / ".bench-out"
        with open(out_path, "wb") as out, open(cwd / ".bench-err", "wb") as err:
            pid = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=null).pid
            _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = (cwd / ".bench-err").read_text()[-3000:]
        sys.exit(f"bench: {' '.join(cmd)} exited {code}:\n{tail}")
    summary = {}
    for line in reversed(out_path.read_text().splitlines()):
        if line.startswith("{") and '"stage"' in line:
            summary = json.loads(line)
            break
    return Cost(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, summary)


# ----------------------------------------------------------------------------- workspaces
class Workspace:
    """A DVC workspace as the DAG's volume holds it, with `days` of history committed."""

    def __init__(self, workdir: Path, name: str, app: Path):
        self.app = app
        self.path = workdir / name
        self.remote = workdir / f"{self.path.name}-remote"
        self.env = environment()
        self.env["DVC_REMOTE_URL"] = str(self.remote)
        for path in (self.path, self.remote):
            shutil.rmtree(path, ignore_errors=True)
        self.day = FIRST_DAY - dt.timedelta(days=1)  # the last day it holds
        self.command(["prepare"])

    def command(self, args: list[str], *rest: str) -> Cost:
        cmd = [str(VENV_BIN / "python"), "-m", "pipelines.workspace", args[0]]
        cmd += ["--workspace", str(self.path), "--source-dir", str(self.app), *args[1:]]
        return measure([*cmd, *rest], self.path.parent, self.env)

    def seed(self, folder: Path, days: int) -> None:
        """Hard links to the first `days` batches of the history (no copy, no extra disk)."""
        target = self.path / folder.relative_to(folder.parents[2])
        target.mkdir(parents=True)
        shutil.copyfile(folder / "schema.json", target / "schema.json")
        for i in range(days):
            name = f"{FIRST_DAY + dt.timedelta(days=i)}.parquet"
            os.link(folder / name, target / name)
        self.day = FIRST_DAY + dt.timedelta(days=days - 1)

    def run_day(self, family: str, window: str, stages=STAGES) -> dict[str, Cost]:
        """The next day's run, task by task as the DAG runs it."""
        self.day += dt.timedelta(days=1)
        sets = ["--date", self.day.isoformat()]
        sets += ["--set", f"train.window={window}", "--set", f"train.estimator={family}"]
        tasks = {
            "ingest": ["dvc", "repro", "--force", "--single-item", "ingest"],
            "validate": [str(VENV_BIN / "python"), "-m", "pipelines.validate"],
            "train": ["dvc", "repro", "train"],
            "evaluate": ["dvc", "repro", "evaluate"],
            "dvc_push": ["dvc", "push"],
            "register": ["dvc", "repro", "register"],
        }
        return {stage: self.command(["run", *sets], "--", *tasks[stage]) for stage in stages}

    def rerun_day(self, family: str, window: str) -> dict[str, Cost]:
        """The last day again (a history that must stay the same, e.g. one large batch)."""
        self.day -= dt.timedelta(days=1)
        return self.run_day(family, window)


# ----------------------------------------------------------------------------- tables
def _gb(n: float) -> str:
    return f"{n / (1 << 30):.2f}"


def cell(cost: Cost | None) -> str:
    return "capped" if cost is None else f"{cost.wall:.1f} / {cost.cpu:.1f} / {_gb(cost.peak)}"


def whole(run: dict[str, Cost]) -> Cost:
    total = Cost()
    for cost in run.values():
        total = total + cost
    return total


def _runs(records: list[dict], family: str):
    for record in records:
        if record["family"] == family:
            stages = record.get("stages")
            yield record, {k: Cost(**v) for k, v in stages.items()} if stages else None


def print_stage_tables(records: list[dict], families: list[str]) -> None:
    print("cells: wall s / CPU s / peak GiB of the task's process tree\n")
    for family in families:
        print(f"#### {family}\n")
        print("| days | window | batches | rows read | " + " | ".join(STAGES) + " | whole run |")
        print("|---|---|---|---|" + "---|" * (len(STAGES) + 1))
        for record, run in _runs(records, family):
            label = f"| {record['days']} | {record['window']} |"
            if run is None:
                print(label + " - | - |" + " capped |" * (len(STAGES) + 1))
                continue
            window = run["train"].summary["window"]
            cells = " | ".join(cell(run.get(s)) for s in STAGES)
            print(
                f"{label} {window['history_files']} | {window['rows']:,} | {cells} | "
                f"{cell(whole(run))} |"
            )
        print()


def print_flatness(records: list[dict], families: list[str]) -> None:
    print(f"#### Window {WINDOW}: the whole run at the longest history against 30 days\n")
    print(
        "| family | CPU s, 30 days | CPU s, longest | ratio | peak GiB, 30 days "
        "| peak GiB, longest | ratio | wall s, 30 days | wall s, longest |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for family in families:
        runs = [
            (r["days"], run)
            for r, run in _runs(records, family)
            if run and r["window"] == WINDOW and isinstance(r["days"], int)
        ]
        short = next((run for days, run in runs if days == 30), None)
        if not short or not runs:
            continue
        days, long = max(runs, key=lambda item: item[0])
        a, b = whole(short), whole(long)
        print(
            f"| {family} | {a.cpu:.1f} | {b.cpu:.1f} ({days} days) | {b.cpu / a.cpu:.2f} | "
            f"{_gb(a.peak)} | {_gb(b.peak)} | {b.peak / a.peak:.2f} | {a.wall:.1f} | "
            f"{b.wall:.1f} |"
        )
    print()


def _checks(records: list[dict], family: str):
    """(stage, step, check) of every memory check the stages of `family` reported."""
    for _, run in _runs(records, family):
        for stage in ("train", "evaluate", "register"):
            for check in (run or {}).get(stage, Cost()).summary.get("memory", {}).get("checks", []):
                yield stage, check["step"], check


def calibration(records: list[dict], family: str) -> dict[str, tuple[float, int]]:
    """Each step's (bytes per cell, overhead bytes) for `family`: the slope of peak growth over
    cells between its smallest and biggest run, then the overhead that puts that line above
    every run (the growth of a step is the high-water mark after it less what it started with)."""
    points: dict[str, list[tuple[int, int]]] = {}
    for _, step, check in _checks(records, family):
        grown = max(check["peak_after"] - check["resident_before"], 0)
        points.setdefault(step, []).append((check["rows"] * check["columns"], grown))
    out = {}
    for step, values in points.items():
        values.sort()
        (c0, g0), (c1, g1) = values[0], values[-1]
        slope = max((g1 - g0) / (c1 - c0), 0.0) if c1 > c0 else 0.0
        out[step] = (slope, int(max(g - c * slope for c, g in values)))
    return out


def print_memory(records: list[dict], families: list[str]) -> None:
    """Rows per GiB of each family, the calibration pipelines/memory.py holds, and how its
    estimates compare with the peaks measured."""
    from pipelines import memory

    print("#### Memory per row: the whole run's peak (its hungriest task) against rows read\n")
    print(
        "| family | rows, smallest run | peak GiB | rows, biggest run | peak GiB "
        "| rows per GiB above the smallest | window rows in a 2 GiB limit |"
    )
    print("|---|---|---|---|---|---|---|")
    for family in families:
        points = sorted(
            (run["train"].summary["window"]["rows"], whole(run).peak)
            for _, run in _runs(records, family)
            if run
        )
        if len(points) < 2:
            continue
        (r0, p0), (r1, p1) = points[0], points[-1]
        per_gib = (r1 - r0) / max(p1 - p0, 1) * (1 << 30)
        fits = r0 + ((2 << 30) - p0) / (1 << 30) * per_gib
        print(
            f"| {family} | {r0:,} | {_gb(p0)} | {r1:,} | {_gb(p1)} | {per_gib:,.0f} | {fits:,.0f} |"
        )
    print()
    factors = {
        "load": lambda family: memory.LOAD_BYTES_PER_CELL,
        "fit": lambda family: memory.family_factor(memory.FIT_BYTES_PER_CELL, family),
        "score": lambda family: memory.family_factor(memory.SCORE_BYTES_PER_CELL, family),
    }
    print(
        "#### Memory checks (pipelines/memory.py): measured bytes per cell and overhead of each "
        "step, and the estimates it makes against the peaks measured\n"
    )
    print(
        "| family | step | bytes per cell | overhead MiB | runs | biggest peak after MiB "
        "| its estimate MiB | lowest estimate / peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for family in families:
        measured = calibration(records, family)
        for step in ("load", "fit", "score"):
            checks = [c for _, s, c in _checks(records, family) if s == step]
            if not checks:
                continue
            ratios, biggest = [], max(checks, key=lambda c: c["rows"] * c["columns"])
            for check in checks:
                estimate = memory.estimate_peak(
                    step, check["rows"], check["columns"], factors[step](family),
                    check["resident_before"],
                )  # fmt: skip
                ratios.append(estimate / check["peak_after"])
            estimate = memory.estimate_peak(
                step, biggest["rows"], biggest["columns"], factors[step](family),
                biggest["resident_before"],
            )  # fmt: skip
            slope, overhead = measured[step]
            print(
                f"| {family} | {step} | {slope:.1f} | {overhead / MIB:.0f} | {len(checks)} | "
                f"{biggest['peak_after'] / MIB:.0f} | {estimate / MIB:.0f} | {min(ratios):.2f} |"
            )
    print()


def print_dvc(rows: list[dict]) -> None:
    print(
        "#### DVC's hashing: `dvc status` with its state on the workspace, and with a fresh "
        "state (what each new task container had before the fix)\n"
    )
    print(
        "| days | state kept: wall s / CPU s | dataset files (MB) read | fresh state: wall s / "
        "CPU s | dataset files (MB) read |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        kept, fresh = Cost(**row["kept"]), Cost(**row["fresh"])
        kept_mb, fresh_mb = (row.get(k, 0) / 1e6 for k in ("kept_bytes", "fresh_bytes"))
        print(
            f"| {row['days']} | {kept.wall:.1f} / {kept.cpu:.1f} | {row['kept_reads']} "
            f"({kept_mb:.0f}) | {fresh.wall:.1f} / {fresh.cpu:.1f} | {row['fresh_reads']} "
            f"({fresh_mb:.0f}) |"
        )
    print()


def report(results: dict) -> None:
    loads = results["loads"]
    families = results["families"]
    print(f"\nload average (1 min) during the runs: {min(loads):.1f} to {max(loads):.1f}\n")
    print_stage_tables(results["runs"], families)
    print_flatness(results["runs"], families)
    print_memory(results["runs"], families)
    print_dvc(results["dvc"])


def dataset_reads(ws: Workspace, fresh: bool) -> tuple[Cost, int, int]:
    """`dvc status`'s cost, and how many dataset files (and bytes) it opened (strace, in a
    separate run: tracing slows it)."""
    env = dict(ws.env)
    if fresh:
        env["DVC_SITE_CACHE_DIR"] = str(ws.path.parent / f"fresh-{time.monotonic_ns()}")
    cost = measure(["dvc", "status"], ws.path, env)
    if fresh:
        env["DVC_SITE_CACHE_DIR"] += "-strace"
    trace = ws.path.parent / ".bench-strace"
    cmd = ["strace", "-f", "-qq", "-e", "trace=openat", "-o", str(trace), "dvc", "status"]
    if shutil.which("strace") is None:
        return cost, -1, -1
    measure(cmd, ws.path, env)
    opened = {line.split('"')[1] for line in trace.read_text().splitlines() if ".parquet" in line}
    read = [Path(p) for p in opened if "/data/dataset/" in p and Path(p).exists()]
    return cost, len(read), sum(p.stat().st_size for p in read)


# ----------------------------------------------------------------------------- main
def make_csv(path: Path, rows: int) -> None:
    """One day of `rows` demo rows as a CSV file, written part by part (in a child process)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from pipelines import demo

    writer = None
    for part in demo.batch_parts(FIRST_DAY, 42, rows, 100_000):
        table = pa.Table.from_pandas(part, preserve_index=False)
        writer = writer or pacsv.CSVWriter(str(path) + ".tmp", table.schema)
        writer.write_table(table)
    writer.close()
    os.replace(str(path) + ".tmp", path)


def big_batch_csv(workdir: Path, rows: int) -> Path:
    path = workdir / "incoming" / f"{FIRST_DAY}.csv"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(VENV_BIN / "python"), __file__, "--make-csv", str(path), str(rows)]
        subprocess.run(cmd, check=True, env=environment())
    return path


def _record(family, days, window, run: dict[str, Cost] | None) -> dict:
    stages = None if run is None else {k: vars(v) for k, v in run.items()}
    return {"family": family, "days": days, "window": window, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", default="1,30,300,1000")
    parser.add_argument("--families", default="all")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/conveyor-bench-pipeline"))
    parser.add_argument("--big-rows", type=int, default=1_000_000, help="0: no large batch")
    parser.add_argument("--no-window-cap", default="random_forest=300")
    parser.add_argument(
        "--report", action="store_true", help="print the tables of the last run's results.json"
    )
    parser.add_argument("--make-history", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--make-csv", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make_history:
        root, params_file, days = args.make_history
        make_history(Path(root), Path(params_file) / "params.yaml", int(days))
        return 0
    if args.make_csv:
        make_csv(Path(args.make_csv[0]), int(args.make_csv[1]))
        return 0
    results_file = args.workdir / "results.json"
    if args.report:
        report(json.loads(results_file.read_text()))
        return 0
    days_list = [int(d) for d in args.days.split(",") if d]  # --days '': the large batch only
    everything = [*CLASSIFIERS, *REGRESSORS]
    chosen = everything if args.families == "all" else args.families.split(",")
    caps = {k: int(v) for k, v in (i.split("=") for i in args.no_window_cap.split(",") if i)}
    args.workdir.mkdir(parents=True, exist_ok=True)

    results: dict = {"families": chosen, "runs": [], "loads": [], "dvc": []}
    for task, families in (("classification", CLASSIFIERS), ("regression", REGRESSORS)):
        families = [f for f in families if f in chosen]
        if not families:
            continue
        app = source_dir(args.workdir, task)
        folder = history(args.workdir, app, task, max(days_list)) if days_list else None
        for days in days_list:
            ws = Workspace(args.workdir, f"ws-{task}-{days}", app)
            ws.seed(folder, days - 1)  # the warm-up run adds day `days`, the measured runs after
            log(f"{task}, {days} days: warm-up run")
            ws.run_day(families[0], WINDOW)
            if task == "classification":
                kept, kept_reads, kept_bytes = dataset_reads(ws, fresh=False)
                fresh, fresh_reads, fresh_bytes = dataset_reads(ws, fresh=True)
                results["dvc"].append(
                    {"days": days, "kept": vars(kept), "fresh": vars(fresh),
                     "kept_reads": kept_reads, "fresh_reads": fresh_reads,
                     "kept_bytes": kept_bytes, "fresh_bytes": fresh_bytes}
                )  # fmt: skip
            for family in families:
                for window in (WINDOW, "all"):
                    if window == "all" and days <= 30:
                        continue  # the window holds the whole history: the same run
                    if window == "all" and days > caps.get(family, days):
                        results["runs"].append(_record(family, days, window, None))
                        continue
                    log(f"{family}, {days} days, window {window}")
                    results["loads"].append(os.getloadavg()[0])
                    run = ws.run_day(family, window)
                    results["runs"].append(_record(family, days, window, run))
                    results_file.write_text(json.dumps(results, default=str))
            shutil.rmtree(ws.path, ignore_errors=True)
            shutil.rmtree(ws.remote, ignore_errors=True)

        if args.big_rows:
            csv = big_batch_csv(args.workdir, args.big_rows)
            app = source_dir(args.workdir, task, source=str(csv.parent / "{date}.csv"))
            ws = Workspace(args.workdir, f"ws-{task}-big", app)
            ws.day = FIRST_DAY  # every family's run ingests the one CSV again
            for family in families:
                log(f"{family}, one batch of {args.big_rows:,} rows")
                results["loads"].append(os.getloadavg()[0])
                run = ws.rerun_day(family, "all")
                label = f"1 ({args.big_rows:,} rows)"
                results["runs"].append(_record(family, label, "all", run))
                results_file.write_text(json.dumps(results, default=str))
            shutil.rmtree(ws.path, ignore_errors=True)
            shutil.rmtree(ws.remote, ignore_errors=True)

    results_file.write_text(json.dumps(results, default=str))
    report(results)
    return 0


def log(message: str) -> None:
    print(f"bench: {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
