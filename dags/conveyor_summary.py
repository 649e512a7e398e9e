"""One glance at a `retrain` run: its note in the Airflow UI.

`run_summary(...)` builds the note (Markdown, shown on the run's page and in the runs list) from
the run's XComs: why it ran, the model version, the gate decision with both scores, the training
window (dates and rows), deployed or kept, the link to the MLflow run. `set_run_note(...)` writes
it through the REST API (`PATCH /api/v2/dags/{dag}/dagRuns/{run}`: a task has no other way to a
run's note). `summarize_task()` is the task the DAG ends with (trigger rule all_done: a failed or
quarantined run gets its note too).

Environment (of the dag-processor and the scheduler, which runs the tasks under LocalExecutor):
  CONVEYOR_AIRFLOW_API_URL  the api-server as the worker reaches it (http://airflow-api-server:8080)
  CONVEYOR_NOTES_USER       an Airflow user allowed to edit DAG runs (SimpleAuthManager role user)
  CONVEYOR_NOTES_PASSWORD   its password (read when the task runs)
  MLFLOW_UI_URL             MLflow as a person opens it, e.g. http://127.0.0.1:5000
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

NOTE_LIMIT = 1000  # characters Airflow keeps in a run note


def _score(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def run_summary(
    *,
    date: str,
    trigger: Mapping[str, Any] | None,
    registration: Mapping[str, Any] | None,
    deploy: Mapping[str, Any] | None,
    states: Mapping[str, str],
    mlflow_ui: str,
) -> str:
    """The note of a retrain run. `states`: task id -> final state of the run's tasks."""
    trigger = trigger or {}
    lines = [
        f"**retrain {date}** ({trigger.get('trigger', 'run')}): "
        f"{trigger.get('reason') or 'no reason recorded'}"
    ]
    if states.get("validate") == "skipped":
        lines.append("Batch **quarantined** by validate: not trained on; the champion serves on.")
    failed = sorted(t for t, s in states.items() if s in ("failed", "upstream_failed"))
    if registration:
        r = registration
        lines.append(
            f"Model {r.get('model_name')} **v{r.get('version')}**, gate **{r.get('decision')}**: "
            f"{r.get('metric')} {_score(r.get('candidate_score'))} vs champion "
            f"{_score(r.get('champion_score'))} (min improvement {r.get('min_improvement')})"
        )
        window = r.get("window")
        if window:  # pipelines/data.py's summary of the data the model was trained and scored on
            lines.append(
                f"Data: window `{window.get('window')}`, {window.get('files')} of "
                f"{window.get('history_files')} batches ({window.get('first_date')} to "
                f"{window.get('last_date')}), {window.get('train_rows')} rows trained, "
                f"{window.get('holdout_rows')} held out"
            )
        if r.get("run_id"):
            lines.append(f"MLflow run: {mlflow_ui.rstrip('/')}/#/runs/{r['run_id']}")
    # release/deploy.py's summary: the target and what it changed (a compose container, a
    # swarm service or a kubernetes deployment).
    where = deploy and (
        deploy.get("container") or deploy.get("service") or deploy.get("deployment") or "?"
    )
    if deploy and deploy.get("changed"):
        replaced = f" (replaced {deploy['previous']})" if deploy.get("previous") else ""
        lines.append(
            f"Serving: **deployed** v{deploy.get('model_version')} to "
            f"{deploy.get('target', 'compose')} {where}{replaced}"
        )
    elif deploy:
        lines.append(
            f"Serving: v{deploy.get('model_version')} was already live in {where}: unchanged"
        )
    elif states.get("keep_current_model") == "success":
        lines.append("Serving: **kept** the current model (not promoted)")
    if failed:
        lines.append(f"**Failed**: {', '.join(failed)} (see the task logs)")
    note = "\n\n".join(lines)
    return note if len(note) <= NOTE_LIMIT else note[: NOTE_LIMIT - 1] + "…"


def set_run_note(
    api_url: str,
    user: str,
    password: str,
    dag_id: str,
    run_id: str,
    note: str,
    timeout: float = 10.0,
) -> None:
    """Write a run's note through the REST API (token from POST /auth/token)."""
    import httpx

    base = api_url.rstrip("/")
    with httpx.Client(timeout=timeout) as client:
        token = client.post(f"{base}/auth/token", json={"username": user, "password": password})
        token.raise_for_status()
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        answer = client.patch(
            f"{base}{path}", params={"update_mask": "note"}, json={"note": note}, headers=headers
        )
        answer.raise_for_status()


def summarize_task(
    register_task: str = "register",
    deploy_task: str = "deploy",
    trigger_task: str = "resolve_trigger",
):
    """The last task of `retrain`: builds the note from the XComs and writes it. The addresses
    are read when the DAG file is parsed (a missing one is an import error naming it); the
    password when the task runs (it never enters the serialized DAG)."""
    import httpx
    from airflow.sdk import get_current_context, task
    from conveyor_operator import setting

    api_url, user = setting("CONVEYOR_AIRFLOW_API_URL"), setting("CONVEYOR_NOTES_USER")
    mlflow_ui = setting("MLFLOW_UI_URL")

    @task(
        task_id="summarize",
        trigger_rule="all_done",
        doc_md="The run's note (Airflow UI): trigger and reason, model version, gate decision "
        "with both scores, deployed or kept, MLflow link.",
    )
    def summarize() -> str:
        context = get_current_context()
        ti, dag_run = context["ti"], context["dag_run"]
        trigger = ti.xcom_pull(task_ids=trigger_task) or {}
        states = {
            t: str(getattr(s, "value", s))
            for t, s in (
                ti.get_task_states(dag_id=ti.dag_id, run_ids=[dag_run.run_id]).get(
                    dag_run.run_id, {}
                )
                or {}
            ).items()
        }
        note = run_summary(
            date=trigger.get("date", "?"),
            trigger=trigger,
            registration=ti.xcom_pull(task_ids=register_task),
            deploy=ti.xcom_pull(task_ids=deploy_task),
            states=states,
            mlflow_ui=mlflow_ui,
        )
        print(note)
        # The note is a view of the run, not part of it: failing to write it (API down, password
        # missing) is logged and leaves the run's outcome alone.
        try:
            password = os.environ["CONVEYOR_NOTES_PASSWORD"]
            set_run_note(api_url, user, password, ti.dag_id, dag_run.run_id, note)
        except (KeyError, OSError, httpx.HTTPError) as exc:
            print(f"summarize: the run note was not written: {type(exc).__name__}: {exc}")
        return note

    return summarize()
