"""pipelines.memory: the limit read from cgroup files as the kernel lays them out (v1 and v2, on
a host and inside a container), and the check that stops a stage in one line before a step
that would not fit. A stage under a real limit: tests/pipelines/test_limits.py (containers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.common import PipelineError
from pipelines.memory import UNLIMITED, Budget, Limit, gib, memory_limit, resident_bytes

pytestmark = pytest.mark.unit

MIB = 1 << 20


def _tree(root: Path, files: dict[str, str], proc: str) -> tuple[Path, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    (root / "proc").write_text(proc)
    return root / "fs", root / "proc"


@pytest.mark.parametrize(
    ("files", "proc", "expected"),
    [
        # cgroup v2 inside a container (cgroup namespace: its own cgroup is the mount's root)
        ({"fs/memory.max": str(512 * MIB)}, "0::/\n", 512 * MIB),
        ({"fs/memory.max": "max"}, "0::/\n", None),
        # cgroup v2 on a host: the lowest limit along the path wins
        (
            {
                "fs/memory.max": "max",
                "fs/jobs/memory.max": str(2048 * MIB),
                "fs/jobs/train/memory.max": str(3072 * MIB),
            },
            "0::/jobs/train\n",
            2048 * MIB,
        ),
        # cgroup v1 in a container: /proc names the host's path, the mount is the container's
        (
            {"fs/memory/memory.limit_in_bytes": str(2048 * MIB)},
            "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n",
            2048 * MIB,
        ),
        # cgroup v1 without a limit: the kernel's "unlimited"
        (
            {"fs/memory/memory.limit_in_bytes": "9223372036854771712"},
            "4:memory:/\n",
            None,
        ),
        # v1 controllers mounted together
        (
            {"fs/memory/a/memory.limit_in_bytes": str(300 * MIB)},
            "5:cpuacct,memory:/a\n",
            300 * MIB,
        ),
        ({}, "0::/\n", None),  # a laptop's view: no cgroup files at all
    ],
)
def test_the_limit_is_the_lowest_on_the_cgroup_path(tmp_path, files, proc, expected):
    fs, proc_file = _tree(tmp_path, files, proc)
    limit = memory_limit(fs, proc_file)
    assert (limit.bytes if limit else None) == expected
    if limit:
        assert (
            limit.source.startswith("cgroup v")
            and str(limit.bytes) in Path(limit.source.split(" ", 2)[2]).read_text()
        )


def test_no_proc_file_means_no_limit(tmp_path):
    assert memory_limit(tmp_path, tmp_path / "missing") is None
    assert UNLIMITED < 9223372036854771712


def test_a_step_that_does_not_fit_stops_in_one_line_naming_stage_rows_and_limit():
    room = resident_bytes() + 1024 * MIB  # this process (pytest) holds what it holds already
    budget = Budget("train", limit=Limit(room, "cgroup v1 /sys/fs/cgroup/memory/x"))
    budget.check("load", 1000, 10, 60.0, "window 30 days")  # ~0.6 MB of cells: fits
    with pytest.raises(PipelineError) as err:
        budget.check("fit", 3_000_000, 21, 60.0, "logistic_regression")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("fit of 3,000,000 rows x 21 columns (logistic_regression) needs ~")
    assert f"above the memory limit {gib(room)} (cgroup v1 /sys/fs/cgroup/memory/x)" in message
    assert "train.window" in message
    summary = budget.summary()
    assert summary["limit"] == room and [c["step"] for c in summary["checks"]] == ["load", "fit"]
    assert summary["checks"][0]["peak_after"] >= summary["checks"][0]["resident_before"] > 0


def test_without_a_limit_the_check_only_logs(capsys):
    budget = Budget("evaluate", limit=None)
    budget.check("score", 10**9, 100, 60.0, "random_forest")
    assert "limit none" in capsys.readouterr().err
