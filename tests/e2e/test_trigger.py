"""Bad triggers get a one-line answer and never reach Airflow as a run: `scripts/airflow_api.py
trigger` (what `make retrain` runs) against the test stack, with a future date, a malformed
date, and conf that does not match the DAG's params (read from the DAG itself)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest

from tests.e2e.conftest import DAG, Runs
from tests.helpers.stack import ROOT, TestStack

pytestmark = pytest.mark.e2e

TOMORROW = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%d")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--date", TOMORROW], f"--date {TOMORROW} is in the future"),
        (["--date", "2026-02-30"], "--date '2026-02-30' is not a date of the form YYYY-MM-DD"),
        (["--date", "yesterday"], "--date 'yesterday' is not a date of the form YYYY-MM-DD"),
        (["--conf", '{"forse_deploy": true}'], "--conf key 'forse_deploy' is not a param of"),
        (["--conf", '{"train": 5}'], "--conf key 'train': 5 is not of type 'object'"),
        (["--conf", '{"ready_timeout": 1}'], "--conf key 'ready_timeout': 1 is less than"),
        (["--conf", '{"force_deploy": "yes"}'], "--conf key 'force_deploy': 'yes' is not of"),
        (["--conf", "[1, 2]"], "--conf must be a JSON object"),
        (["--conf", "{oops"], "--conf is not JSON"),
    ],
)
def test_a_bad_trigger_is_refused_in_one_line_and_creates_no_run(
    test_stack: TestStack, runs: Runs, args: list[str], message: str
):
    before = {r["dag_run_id"] for r in runs.client.dag_runs(DAG, limit=1000)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "airflow_api.py"), "trigger", DAG, *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "CONVEYOR_ENV_FILE": str(test_stack.env_file)},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert {r["dag_run_id"] for r in runs.client.dag_runs(DAG, limit=1000)} == before
