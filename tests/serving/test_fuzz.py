"""Schemathesis over the live server's /openapi.json with `--checks all` (response schemas,
status codes, content types, unsupported methods; schema-valid requests must get 2xx and
schema-violating ones a 4xx), positive and negative cases, a bounded number of examples.

One exclusion, on /invocations only, is run separately: `negative_data_rejection`. MLflow's
contract takes more than JSON Schema can state (`inputs`/`instances` as an object of equally long
columns), so a "schema-violating" body there can be a valid MLflow request."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.test_server import serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # fuzzing a live server


# /invocations without negative_data_rejection: see the module docstring
RUNS = [
    ["--exclude-operation-id", "invocations"],
    ["--include-operation-id", "invocations", "--exclude-checks", "negative_data_rejection"],
]


@pytest.mark.parametrize("family", ["lr", "hgb_regressor"])
def test_schemathesis_all_checks(family, family_dirs, compiled, tmp_path):
    model_dir = family_dirs[family]
    schemathesis = str(Path(sys.executable).parent / "schemathesis")
    with serve(model_dir, compiled(model_dir), tmp_path, MAX_BATCH_SIZE="20") as (_, base, _):
        for selection in RUNS:
            proc = subprocess.run(
                [
                    schemathesis,
                    "run",
                    f"{base}/openapi.json",
                    "--checks",
                    "all",
                    "--mode",
                    "all",
                    "--max-examples",
                    "60",
                    "--seed",
                    "1",
                    "--no-color",
                    *selection,
                ],
                cwd=tmp_path,  # its failure cache (.schemathesis/) stays out of the repository
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert proc.returncode == 0, proc.stdout[proc.stdout.find("FAILURES") :][:6000]
            assert "No issues found" in proc.stdout
