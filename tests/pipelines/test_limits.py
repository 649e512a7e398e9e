"""Large batches and memory limits, in the training image under a real limit: a container with
`--memory` (and no swap), as the DAG runs every task (CONVEYOR_TASK_MEMORY_LIMIT). The kernel
counts the container's resident memory against the cgroup's limit and kills it past the limit
(exit 137, OOMKilled), so a stage that finishes under it stayed under it: a bound on what the
process really holds, unlike RLIMIT_AS, which counts address space that libraries reserve and
never touch.

The batch: 1,000,000 demo rows plus a free-text `notes` column of 1,000 characters, as exports
carry (dropped by the schema). Loaded whole it takes several times the limit; ingest streams all
of it, validate reads the schema's columns only, both in chunks. A second day whose last chunk
holds one bad value is quarantined whole, nothing lost. Train refuses a window that would not
fit, in one line with exit code 2, before it loads anything."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipelines import demo
from pipelines.common import DATASET_DIR, LANDING_DIR, QUARANTINE_DIR
from tests.docker.toolchain import LABEL, docker, remove_labelled
from tests.helpers import measured
from tests.pipelines.conftest import edit, repo_params, write_params

pytestmark = pytest.mark.docker

MIB = 1 << 20
LIMIT = 450 * MIB  # ingest and validate: streamed, far below the batch
TRAIN_LIMIT = 768 * MIB  # train imports sklearn and MLflow and logs a model: ~0.45 GiB at least
ROWS = 1_000_000
NOTE_CHARS = 1000
GOOD, BAD = "2026-03-01", "2026-03-02"


def _csv(path: Path, day: str, rows: int) -> None:
    """The demo batch of `day` with a notes column, written part by part (never whole)."""
    rng = np.random.default_rng(0)
    pool = np.array([f"{i:03d} " + "call about the bill; " * (NOTE_CHARS // 21) for i in range(64)])
    writer = None
    for part in demo.batch_parts(dt.date.fromisoformat(day), 42, rows, 100_000):
        part["notes"] = pool[rng.integers(0, len(pool), len(part))]
        table = pa.Table.from_pandas(part, preserve_index=False)
        writer = writer or pacsv.CSVWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


@pytest.fixture(scope="module")
def incoming(tmp_path_factory) -> Path:
    """incoming/<day>/: the good day as one CSV; the bad day as the same file (a hard link, no
    second gigabyte) and a late file of one row with a tenure of -5 months."""
    root = tmp_path_factory.mktemp("incoming")
    root.chmod(0o755)  # read by the image's user
    good, bad = root / GOOD, root / BAD
    good.mkdir()
    bad.mkdir()
    _csv(good / "part-1.csv", GOOD, ROWS)
    os.link(good / "part-1.csv", bad / "part-1.csv")
    header, first = (good / "part-1.csv").open().readline(), None
    with (good / "part-1.csv").open() as fh:
        fh.readline()
        first = fh.readline().split(",")
    first[0], first[2] = '"C20260302-late"', "-5"
    (bad / "part-2.csv").write_text(header + ",".join(first))
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, incoming):
    ws = tmp_path_factory.mktemp("ws")
    os.chown(ws, 1000, 1000)
    yield ws
    remove_labelled()


def _params(ws: Path, **changes) -> None:
    params = edit(
        repo_params(),
        {
            "ingest.source": "/incoming/{date}",
            "ingest.date": GOOD,
            "schema.drop_columns": ["notes"],
            "train.window": "all",
            **changes,
        },
    )
    write_params(ws / "params.yaml", params)
    os.chown(ws / "params.yaml", 1000, 1000)


def _limited(image: str, ws: Path, incoming: Path, stage: str, limit: int = LIMIT) -> dict:
    """`python -m pipelines.<stage>` in a container limited to `limit` (swap off): its exit
    code, output, whether the kernel killed it, the limit the engine set, and the cgroup's peak
    usage as it saw it (reported, not asserted: a cgroup never holds more than its limit; that
    the stage finished, not killed, is what shows it fit)."""
    name = f"conveyor-test-{uuid.uuid4().hex[:8]}"
    script = (
        f"python -m pipelines.{stage}; code=$?; "
        "echo peak=$(cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes "
        "/sys/fs/cgroup/memory.peak 2>/dev/null | head -1) >&2; exit $code"
    )
    proc = docker(
        "run", "--name", name, "--label", LABEL, "--memory", str(limit),
        "--memory-swap", str(limit), "-v", f"{ws}:/workspace", "-v", f"{incoming}:/incoming:ro",
        image, "bash", "-c", script, timeout=900, check=False,
    )  # fmt: skip
    inspected = json.loads(docker("inspect", name).stdout)[0]
    state = inspected["State"]
    docker("rm", "-f", name)
    lines = proc.stderr.strip().splitlines()
    peak = next((int(x[5:]) for x in reversed(lines) if x.startswith("peak=") and x[5:]), None)
    return {
        "code": state["ExitCode"],
        "oom": state["OOMKilled"],
        "stdout": proc.stdout,
        "stderr": [x for x in lines if not x.startswith("peak=")],
        "peak": peak,
        "limit": inspected["HostConfig"]["Memory"],
    }


def _in_memory(path: Path) -> int:
    """The batch's size as a pandas frame, from its first 10,000 rows (it is never loaded)."""
    sample = next(pq.ParquetFile(path).iter_batches(batch_size=10_000)).to_pandas()
    return int(sample.memory_usage(deep=True).sum() / len(sample) * pq.read_metadata(path).num_rows)


def test_a_million_rows_are_ingested_and_validated_under_a_limit_below_their_size(
    train_image, workspace, incoming, request
):
    _params(workspace)
    ingested = _limited(train_image, workspace, incoming, "ingest")
    assert (ingested["code"], ingested["oom"]) == (0, False), ingested["stderr"]
    landed = workspace / LANDING_DIR / "batch.parquet"
    assert pq.read_metadata(landed).num_rows == ROWS
    assert _in_memory(landed) > 2 * LIMIT  # the batch is more than twice what the stage may hold

    validated = _limited(train_image, workspace, incoming, "validate")
    assert (validated["code"], validated["oom"]) == (0, False), validated["stderr"]
    assert json.loads(validated["stdout"].splitlines()[-1])["status"] == "passed"
    stored = next((workspace / DATASET_DIR).glob(f"*/{GOOD}.parquet"))
    assert pq.read_metadata(stored).num_rows == ROWS
    for stage, run in (("ingest", ingested), ("validate", validated)):
        assert run["limit"] == LIMIT  # the limit was in force
        if run["peak"] is not None:
            measured.note(
                request, f"limits: {stage} peak of 1M rows (limit 450)", run["peak"] / MIB, "MiB"
            )


def test_a_window_that_would_not_fit_stops_train_in_one_line_with_exit_2(
    train_image, workspace, incoming
):
    _params(workspace)
    refused = _limited(train_image, workspace, incoming, "train", TRAIN_LIMIT)
    assert (refused["code"], refused["oom"]) == (2, False), refused["stderr"]
    (line,) = refused["stderr"]
    assert line.startswith(
        "train: error: load of 1,000,000 rows x 13 columns (window all) needs ~"
    ), line
    assert "above the memory limit 0.75 GiB (cgroup v" in line and "train.window" in line
    assert not (workspace / "models").exists()

    _params(workspace, **{"train.window": "20000 rows"})  # the newest rows fit: it trains
    trained = _limited(train_image, workspace, incoming, "train", TRAIN_LIMIT)
    assert (trained["code"], trained["oom"]) == (0, False), trained["stderr"][-3:]
    summary = json.loads(trained["stdout"].splitlines()[-1])
    assert summary["window"]["rows"] == 20000 and summary["memory"]["limit"] == TRAIN_LIMIT
    assert trained["limit"] == refused["limit"] == TRAIN_LIMIT  # the limit was in force


def test_a_bad_chunk_quarantines_the_whole_batch_under_the_limit(train_image, workspace, incoming):
    _params(workspace, **{"ingest.date": BAD})
    ingested = _limited(train_image, workspace, incoming, "ingest")
    assert (ingested["code"], ingested["oom"]) == (0, False), ingested["stderr"]
    validated = _limited(train_image, workspace, incoming, "validate")
    assert (validated["code"], validated["oom"]) == (3, False), validated["stderr"]
    assert "failed 1 check(s): in_range(0.0, 120.0)(tenure_months)" in validated["stderr"][-1]

    quarantined = workspace / QUARANTINE_DIR / BAD
    assert pq.read_metadata(quarantined / "batch.parquet").num_rows == ROWS + 1  # all of it
    (failure,) = json.loads((quarantined / "report.json").read_text())["failures"]
    assert (failure["column"], failure["failed_count"], failure["examples"]) == (
        "tenure_months",
        1,
        ["-5.0"],
    )
    stored = sorted(p.name for p in (workspace / DATASET_DIR).glob("*/*.parquet"))
    assert stored == [f"{GOOD}.parquet"]
