"""Deploy a baked serving image to the target DEPLOY_TARGET names (the DAG's `deploy` task).

    python -m release.deploy --image conveyor/serving-model:conveyor-v3 \
        [--ready-timeout 90] [--smoke-file serving_input_example.json] [--label K=V] [--env K=V]

Targets (one module each, same interface: release/target.py):
  compose     release/targets/compose.py     swap one container behind the nginx gateway
  swarm       release/targets/swarm.py       rolling update of a replicated Swarm service
  kubernetes  release/targets/kubernetes.py  rolling update of the serving Deployment (kubectl)

Their settings come from the environment (release/settings.py); a missing one is one line
naming it, exit 2. A release the target rejects (never ready, rolled back) exits 4 with the
reason. The last stdout line is one JSON object: target, image, model_version, changed, ...
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from pipelines.common import PipelineError
from release import settings as release_settings
from release.build import report
from release.target import Release

TARGETS = {
    "compose": "release.targets.compose",
    "swarm": "release.targets.swarm",
    "kubernetes": "release.targets.kubernetes",
}


def load_smoke_payload(path: Path | None) -> Any:
    """MLflow's serving input example (dataframe_split etc.), if the file is there."""
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineError(f"smoke input {path} is not JSON: {exc}") from exc


def pairs(values: list[str], flag: str) -> dict[str, str]:
    bad = [v for v in values if "=" not in v]
    if bad:
        raise PipelineError(f"{flag} takes KEY=VALUE, got {bad[0]!r}")
    return dict(v.split("=", 1) for v in values)


def run(release: Release) -> dict[str, Any]:
    """Deploy `release` to the target of the environment's DEPLOY_TARGET."""
    target = importlib.import_module(TARGETS[release_settings.deploy_target()])
    return target.deploy(release, release_settings.load(target.Settings))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m release.deploy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--image", required=True)
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        help="seconds the new version has to become ready everywhere",
    )
    parser.add_argument("--smoke-file", type=Path, default=None)
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the new serving containers",
    )
    args = parser.parse_args(argv)

    def release_and_run() -> dict[str, Any]:
        return run(
            Release(
                image=args.image,
                ready_timeout=args.ready_timeout,
                smoke_payload=load_smoke_payload(args.smoke_file),
                labels=pairs(args.label, "--label"),
                environment=pairs(args.env, "--env"),
            )
        )

    return report("deploy: failed", release_and_run)


if __name__ == "__main__":
    sys.exit(main())
