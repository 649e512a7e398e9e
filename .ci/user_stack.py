"""What CI checks of the user's stack around `make test`: that the tests never touch it.

    python .ci/user_stack.py snapshot STATE.json   # after `make up`: runs, model versions, served
    python .ci/user_stack.py check STATE.json      # after `make test`: all still there, healthy

The user's stack is the one of `.env` (never the test suite's `.build/conveyor-test.env`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.airflow_api import AirflowClient, read_env_file  # noqa: E402

ENV_FILE = ROOT / ".env"
HEALTH_GRACE = 90  # seconds


def get(url: str):
    with urllib.request.urlopen(url, timeout=15) as resp:
        return json.loads(resp.read())


def state() -> dict:
    env = read_env_file(ENV_FILE)
    base = "http://127.0.0.1:{}"
    airflow = AirflowClient(
        base.format(env["AIRFLOW_PORT"]), env["AIRFLOW_ADMIN_USER"], env["AIRFLOW_ADMIN_PASSWORD"]
    )
    runs = {r["dag_run_id"]: r["state"] for r in airflow.dag_runs("retrain")}
    versions = get(
        base.format(env["MLFLOW_PORT"])
        + f"/api/2.0/mlflow/model-versions/search?filter=name%3D%27{env['MODEL_NAME']}%27"
    ).get("model_versions", [])
    served = get(base.format(env["SERVING_PORT"]) + "/metadata")
    ps = subprocess.run(
        [
            "bash",
            "scripts/stack.sh",
            "ps",
            "--format",
            "{{.Service}} {{.State}} {{.Health}} {{.ExitCode}}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "CONVEYOR_ENV_FILE": str(ENV_FILE)},
    ).stdout.split("\n")
    unhealthy = [
        line
        for line in ps
        if line.strip()
        and not line.endswith(" running healthy 0")
        and not line.endswith(" exited  0")  # a one-shot service that did its job (init, roles)
    ]
    return {
        "project": env["COMPOSE_PROJECT_NAME"],
        "runs": runs,
        "model_versions": sorted(v["version"] for v in versions),
        "served_version": str(served.get("model_version")),
        "unhealthy": unhealthy,
    }


def main() -> int:
    command, path = sys.argv[1], Path(sys.argv[2])
    now = state()
    # Just unpaused (.ci/run): the health probes that failed while it was frozen pass again
    # within one interval (15 s at most); a service still unhealthy after that is a finding.
    deadline = time.monotonic() + HEALTH_GRACE
    while command == "check" and now["unhealthy"] and time.monotonic() < deadline:
        time.sleep(5)
        now = state()
    if command == "snapshot":
        if not now["runs"] or not now["model_versions"] or now["unhealthy"]:
            print(f"user stack not ready to snapshot: {now}", file=sys.stderr)
            return 1
        path.write_text(json.dumps(now, indent=2))
        print(f"user stack: {json.dumps(now)}")
        return 0
    before = json.loads(path.read_text())
    problems = [f"{k}: {before[k]!r} -> {now[k]!r}" for k in before if before[k] != now[k]]
    if problems:
        print("the user's stack changed during make test:\n  " + "\n  ".join(problems))
        return 1
    print(f"user stack untouched by make test: {json.dumps(now)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
