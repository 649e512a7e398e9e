"""Stage `register`: register the trained model and gate the `champion` alias.

1. The run's model (models/train_run.json) becomes a version of the registered model
   (`register.model_name`, else $MODEL_NAME, else `conveyor`); a version already registered for
   that run id is reused, so re-running register never creates duplicates.
2. The candidate and the current `champion` are scored on the SAME time-based holdout of the
   current dataset with `register.metric`.
3. The candidate takes the `champion` alias only if it beats the champion by at least
   `register.min_improvement` (or there is no champion yet); otherwise it gets `challenger`.
   Aliases only, never the deprecated stages. A champion that cannot be scored on the current
   holdout (e.g. another schema) is kept: the candidate becomes challenger.
4. reports/registration.json records model_name, version, run_id, decision, both scores and
   the champion version after the decision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines import tracking
from pipelines.common import (
    REGISTRATION_FILE,
    TRAIN_RUN_FILE,
    PipelineError,
    atomic_write_json,
    model_name,
    run_cli,
)
from pipelines.data import (
    METRICS,
    improvement,
    load_dataset,
    load_model,
    model_input,
    score,
    target,
    time_split,
)

CHAMPION = "champion"
CHALLENGER = "challenger"


def find_or_create_version(client, name: str, run_id: str, model_uri: str):
    """The version registered from `run_id`, created only if there is none (idempotent)."""
    import mlflow

    try:
        found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except mlflow.exceptions.MlflowException:
        found = []
    if found:
        return min(found, key=lambda v: int(v.version)), False
    version = mlflow.register_model(model_uri, name)
    return client.get_model_version(name, version.version), True


def by_alias(client, name: str, alias: str):
    """The model version holding `alias`, or None (no such model or alias)."""
    import mlflow

    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def decide(metric: str, candidate: float, champion: float | None, min_improvement: float) -> bool:
    """The promotion rule: no champion yet, or better by at least `min_improvement`."""
    if champion is None:
        return True
    return improvement(metric, candidate, champion) >= min_improvement


def register(params: dict[str, Any], root: Path) -> dict[str, Any]:
    import mlflow

    cfg = params.get("register") or {}
    metric = cfg.get("metric", "roc_auc")
    if metric not in METRICS:
        choices = ", ".join(METRICS)
        raise PipelineError(f"register.metric '{metric}' unknown (choose from: {choices})")
    min_improvement = float(cfg.get("min_improvement", 0.0))
    name = model_name(params)
    try:
        run = json.loads((root / TRAIN_RUN_FILE).read_text())
    except OSError as exc:
        raise PipelineError(f"no training run at {TRAIN_RUN_FILE}: run train first") from exc

    _, holdout = time_split(load_dataset(root), params)
    X, y = model_input(holdout, params), target(holdout, params)
    candidate_score = score(load_model(root), X, y)[metric]
    if candidate_score is None:
        raise PipelineError(f"{metric} is undefined on the holdout (one class only?)")

    tracking.configure(root)
    client = mlflow.MlflowClient()
    version, created = find_or_create_version(client, name, run["run_id"], run["model_uri"])
    champion = by_alias(client, name, CHAMPION)
    champion_score: float | None = None
    reason = ""
    if champion is not None and str(champion.version) == str(version.version):
        decision, promote, champion_score = "already_champion", False, candidate_score
        reason = "this version already holds the champion alias"
    else:
        if champion is not None:
            try:
                champ_model = mlflow.sklearn.load_model(f"models:/{name}/{champion.version}")
                champion_score = score(champ_model, X, y)[metric]
            except Exception as exc:  # another schema, missing artifact: keep the champion
                reason = f"champion v{champion.version} could not be scored: {exc}".splitlines()[0]
        if champion is not None and champion_score is None:
            promote = False
            reason = reason or f"champion v{champion.version} has no {metric} on this holdout"
        else:
            promote = decide(metric, candidate_score, champion_score, min_improvement)
            reason = ("no champion yet" if champion is None else
                      f"improvement {improvement(metric, candidate_score, champion_score):+.6f} "
                      f"{'>=' if promote else '<'} min_improvement {min_improvement}")
        decision = "promoted" if promote else "challenger"

    if promote:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        challenger = by_alias(client, name, CHALLENGER)
        if challenger is not None and str(challenger.version) == str(version.version):
            client.delete_registered_model_alias(name, CHALLENGER)
    elif decision == "challenger":
        client.set_registered_model_alias(name, CHALLENGER, version.version)
    for key, value in {"data_version": run.get("data_version", ""),
                       "git_commit": run.get("git_commit", ""),
                       f"holdout_{metric}": candidate_score, "decision": decision}.items():
        client.set_model_version_tag(name, version.version, key, str(value))

    champion_after = version.version if promote or decision == "already_champion" else (
        champion.version if champion is not None else None)
    report = {
        "model_name": name,
        "version": str(version.version),
        "created": created,
        "run_id": run["run_id"],
        "decision": decision,
        "reason": reason,
        "metric": metric,
        "min_improvement": min_improvement,
        "candidate_score": candidate_score,
        "champion_score": champion_score,
        "previous_champion_version": str(champion.version) if champion is not None else None,
        "champion_version": str(champion_after) if champion_after is not None else None,
        "holdout_rows": len(holdout),
        "data_version": run.get("data_version"),
        "git_commit": run.get("git_commit"),
    }
    atomic_write_json(root / REGISTRATION_FILE, report)
    return {"stage": "register", **report}


def main(argv: list[str] | None = None) -> int:
    return run_cli("register", register, argv, doc=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
