"""The memory a stage may use, and a check before each big step that it will stay below it.

The limit is the process's cgroup's: cgroup v2 `memory.max`, cgroup v1 `memory.limit_in_bytes`,
the lowest along the process's cgroup path (inside a container that is the container's limit,
which the DAG sets from CONVEYOR_TASK_MEMORY_LIMIT). A laptop has none: the stages then only log
their estimates.

Before loading the window, and again before fitting or scoring, a stage estimates its peak
resident memory as what it holds now plus rows x columns x the bytes per cell measured for that
step (and model family) by `benchmarks/pipeline`, with a margin. An estimate above the limit
stops the stage with a one-line reason (stage, rows, limit) and exit code 2, before the kernel
would kill it without a word. Each check and the peak measured after it go in the stage's JSON
summary (`memory`), which is where the benchmark reads them from.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.common import PipelineError, log

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as the largest page-aligned 64-bit value

# Peak bytes per cell (rows x columns) of each step above what the process held before it, and
# what each step adds whatever the rows (imports, the model's files, MLflow logging): measured
# by benchmarks/pipeline (the slope of peak RSS over cells from 6,000 to 3,000,000 rows of demo
# data, then the overhead that puts every run under the line; README "Memory"), rounded up.
# MARGIN covers what the demo does not: other data, other allocators' slack. `load`: reading
# the window (cells: rows x columns read); `fit`, `score`: the sklearn Pipeline on the encoded
# input (cells: rows x numeric features plus one column per category), per family.
MARGIN = 1.25
LOAD_BYTES_PER_CELL = 45.0
FIT_BYTES_PER_CELL = {
    "logistic_regression": 16.0,
    "ridge": 16.0,
    "random_forest": 13.0,
    "hist_gradient_boosting": 16.0,
}
SCORE_BYTES_PER_CELL = {
    "logistic_regression": 38.0,
    "ridge": 44.0,
    "random_forest": 32.0,
    "hist_gradient_boosting": 38.0,
}
# score: a random forest scored on 18,000 rows peaked 168 MiB above what the process held.
STEP_OVERHEAD = {"load": 105 << 20, "fit": 170 << 20, "score": 175 << 20}


@dataclass(frozen=True)
class Limit:
    bytes: int
    source: str  # the cgroup file it was read from

    def __str__(self) -> str:
        return f"{gib(self.bytes)} ({self.source})"


def gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text.isdigit() or int(text) >= UNLIMITED:
        return None
    return int(text)


def memory_limit(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> Limit | None:
    """The lowest memory limit on the process's cgroup path (v2 or v1), None when there is none.

    /proc/self/cgroup names the path (`0::/a/b` for v2, `4:memory:/a/b` for v1). Inside a
    container the cgroup mount is the container's own cgroup, so the named path may not exist
    below the mount: its ancestors up to the mount's root are read too."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, name = cgroup_root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = cgroup_root / "memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        candidates += [base.joinpath(*parts[:i], name) for i in range(len(parts), -1, -1)]
    limits = [(value, path) for path in candidates if (value := _read_limit(path)) is not None]
    if not limits:
        return None
    value, path = min(limits)
    version = "v2" if path.name == "memory.max" else "v1"
    return Limit(value, f"cgroup {version} {path}")


def _status(field_name: str) -> int | None:
    """A `Vm...` line of /proc/self/status in bytes (Linux; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resident_bytes() -> int:
    """The process's resident memory now (0 where the system does not say)."""
    return _status("VmRSS") or 0


def peak_bytes() -> int:
    """The process's peak resident memory so far (the kernel's high-water mark)."""
    peak = _status("VmHWM")
    if peak is None:  # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak


def family_factor(table: dict[str, float], family: str) -> float:
    """The family's bytes per cell; an import-path estimator gets the hungriest built-in's."""
    return table.get(family, max(table.values()))


def estimate_peak(step: str, rows: int, columns: int, bytes_per_cell: float, resident: int) -> int:
    """The peak resident memory a step of `rows` x `columns` cells is expected to reach."""
    return int(resident + STEP_OVERHEAD[step] + rows * columns * bytes_per_cell * MARGIN)


@dataclass
class Budget:
    """The memory checks of one stage run, and the peak measured after each."""

    stage: str
    limit: Limit | None = field(default_factory=memory_limit)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def check(self, step: str, rows: int, columns: int, bytes_per_cell: float, what: str) -> None:
        """Stop (exit 2) if `rows` x `columns` at `bytes_per_cell` would exceed the limit."""
        self._close_last()
        now = resident_bytes()
        estimate = estimate_peak(step, rows, columns, bytes_per_cell, now)
        self.checks.append(
            {
                "step": step,
                "rows": rows,
                "columns": columns,
                "resident_before": now,
                "estimate": estimate,
            }
        )
        cells = f"{rows:,} rows x {columns} columns"
        if self.limit is not None and estimate > self.limit.bytes:
            raise PipelineError(
                f"{step} of {cells} ({what}) needs ~{gib(estimate)}, above the memory limit "
                f"{self.limit}: narrow train.window or raise CONVEYOR_TASK_MEMORY_LIMIT"
            )
        limit = str(self.limit) if self.limit is not None else "none"
        log(self.stage, f"memory: {step} of {cells} ({what}) ~{gib(estimate)}, limit {limit}")

    def _close_last(self) -> None:
        if self.checks and "peak_after" not in self.checks[-1]:
            self.checks[-1]["peak_after"] = peak_bytes()

    def summary(self) -> dict[str, Any]:
        self._close_last()
        return {"limit": self.limit.bytes if self.limit else None, "checks": self.checks}
