"""Stage `register`: register the trained model and gate the `champion` alias.

1. The run's model (models/train_run.json) becomes a version of the registered model
   (`register.model_name`, else $MODEL_NAME, else `conveyor`); a version already registered for
   that run id is reused, so re-running register never creates duplicates.
2. The candidate and the current `champion` are scored on the SAME holdout of the current
   dataset with the task's gate metric (`register.metric.<task>`).
3. The candidate takes the `champion` alias only if it beats the champion by at least
   `register.min_improvement` in the metric's direction (or there is no champion yet);
   otherwise it gets `challenger`. Aliases only, never the deprecated stages.
   A champion of another schema (task, target or features: the model's schema fingerprint)
   cannot be compared: the gate says so in one line and `register.on_schema_change` decides
   (`promote` the candidate, or `keep` the champion). A champion of the same schema that
   cannot be scored (e.g. a missing artifact) is kept.
4. reports/registration.json records model_name, version, run_id, decision, reason, both
   scores and the champion version after the decision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines import tracking
from pipelines.common import (
    REGISTRATION_FILE,
    TRAIN_RUN_FILE,
    PipelineError,
    atomic_write_json,
    first_line,
    log,
    run_cli,
)
from pipelines.data import encoded_width, features, read_split, target
from pipelines.memory import SCORE_BYTES_PER_CELL, Budget, family_factor
from pipelines.scoring import improvement, score

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import Params

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


def gate(
    params: Params, champion, candidate: dict[str, Any], X: pd.DataFrame, y: pd.Series
) -> tuple[bool, float | None, str]:
    """(promote, champion's score, one-line reason) for a candidate against another version."""
    import mlflow

    name, task, cfg = params.model_name(), candidate["task"], params.register
    metric = getattr(cfg.metric, task)
    if champion is None:
        return True, None, "no champion yet"
    uri = f"models:/{name}/{champion.version}"
    try:
        champion_schema = (mlflow.models.get_model_info(uri).metadata or {}).get(
            "schema_fingerprint"
        )
    except Exception as exc:  # noqa: BLE001 - a missing artifact: keep the champion
        return False, None, f"champion v{champion.version} unreadable: {first_line(exc)}"
    if champion_schema != candidate["schema_fingerprint"]:
        promote = cfg.on_schema_change == "promote"
        outcome = "promoted" if promote else "champion kept"
        reason = (
            f"schema changed: champion v{champion.version} has schema "
            f"{champion_schema or 'unrecorded'}, the candidate "
            f"{candidate['schema_fingerprint']} (task {task}, target '{params.schema.target}'); "
            f"register.on_schema_change={cfg.on_schema_change}: {outcome}"
        )
        return promote, None, reason
    try:
        champion_score = score(mlflow.sklearn.load_model(uri), X, y, task)[metric]
    except Exception as exc:  # noqa: BLE001 - cannot be scored here: keep the champion
        return False, None, f"champion v{champion.version} could not be scored: {first_line(exc)}"
    if champion_score is None:
        return False, None, f"champion v{champion.version} has no {metric} on this holdout"
    promote = decide(metric, candidate["score"], champion_score, cfg.min_improvement)
    gain = improvement(metric, candidate["score"], champion_score)
    return (
        promote,
        champion_score,
        (
            f"{metric} improvement {gain:+.6f} {'>=' if promote else '<'} "
            f"min_improvement {cfg.min_improvement}"
        ),
    )


def register(params: Params, root: Path) -> dict[str, Any]:
    import mlflow

    name = params.model_name()
    try:
        run = json.loads((root / TRAIN_RUN_FILE).read_text())
    except OSError as exc:
        raise PipelineError(f"no training run at {TRAIN_RUN_FILE}: run train first") from exc

    budget = Budget("register")
    data = read_split(root, params, budget)
    task, window = data.task, data.summary(params.schema.date_column)
    metric = getattr(params.register.metric, task)
    X, y = features(data.holdout, params), target(data.holdout, params, task)
    del data
    estimator = params.train.estimator
    factor = family_factor(SCORE_BYTES_PER_CELL, estimator)
    budget.check("score", len(X), encoded_width(X, params), factor, estimator)
    model, metadata = tracking.load_model(root)
    candidate_score = score(model, X, y, task)[metric]
    if candidate_score is None:
        raise PipelineError(f"{metric} is undefined on the holdout")
    candidate = {
        "task": task,
        "score": candidate_score,
        "schema_fingerprint": metadata["schema_fingerprint"],
    }

    tracking.configure(root)
    client = mlflow.MlflowClient()
    version, created = find_or_create_version(client, name, run["run_id"], run["model_uri"])
    champion = by_alias(client, name, CHAMPION)
    if champion is not None and str(champion.version) == str(version.version):
        decision, promote, champion_score = "already_champion", False, candidate_score
        reason = "this version already holds the champion alias"
    else:
        promote, champion_score, reason = gate(params, champion, candidate, X, y)
        decision = "promoted" if promote else "challenger"
    log("register", f"v{version.version} {decision}: {reason}")

    if promote:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        challenger = by_alias(client, name, CHALLENGER)
        if challenger is not None and str(challenger.version) == str(version.version):
            client.delete_registered_model_alias(name, CHALLENGER)
    elif decision == "challenger":
        client.set_registered_model_alias(name, CHALLENGER, version.version)
    tags = {
        "data_version": run["data_version"],
        "git_commit": run["git_commit"],
        "task": task,
        "schema_fingerprint": candidate["schema_fingerprint"],
        f"holdout_{metric}": candidate_score,
        "decision": decision,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, str(value))

    champion_after = (
        version.version
        if promote or decision == "already_champion"
        else (champion.version if champion is not None else None)
    )
    report = {
        "model_name": name,
        "version": str(version.version),
        "created": created,
        "run_id": run["run_id"],
        "task": task,
        "decision": decision,
        "reason": reason,
        "metric": metric,
        "min_improvement": params.register.min_improvement,
        "candidate_score": candidate_score,
        "champion_score": champion_score,
        "previous_champion_version": str(champion.version) if champion is not None else None,
        "champion_version": str(champion_after) if champion_after is not None else None,
        "holdout_rows": len(X),
        "window": window,
        "data_version": run["data_version"],
        "git_commit": run["git_commit"],
    }
    atomic_write_json(root / REGISTRATION_FILE, report)
    return {"stage": "register", **report, "memory": budget.summary()}


def main(argv: list[str] | None = None) -> int:
    return run_cli("register", register, argv, doc=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
