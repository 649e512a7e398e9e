"""Input drift of the served model, checked on a clock; above the threshold it asks for a retrain.

`check_drift` runs `python -m pipelines.monitor` in the training image: PSI per feature between
the served traffic of the last `monitor.window` (counted by the serving containers, summed by
Prometheus) and each served model version's reference profile, recorded in MLflow and pushed to
Prometheus (see pipelines/monitor.py). `request_retrain` emits an event on the drift asset
(dags/conveyor_assets.py) when the verdict is drift, at most once per model version (a version
whose retrain kept it in service is not asked again); `retrain` is scheduled on that asset and
shows the event's reason in its run note.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException
from conveyor_assets import clock, drift_asset, landing_asset
from conveyor_operator import WORKSPACE, ConveyorDockerOperator, setting

SCHEDULE = setting("MONITOR_SCHEDULE")  # e.g. */30 * * * *; `none`: by hand only
IMAGE_PARAMS = "/app/params.yaml"
RECENT_EVENTS = 50  # drift events looked at to avoid asking twice for one version

with DAG(
    dag_id="monitor",
    description="PSI of served inputs vs the training data's profile; drift asks for a retrain",
    schedule=clock(SCHEDULE),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["conveyor", "ml", "monitoring"],
    params={
        "window": Param(
            "",
            type="string",
            pattern=r"^([1-9][0-9]*[smhd])?$",
            description="Check the traffic of this span, e.g. 15m (empty: params.yaml's "
            "monitor.window)",
        ),
        "since": Param(
            "",
            type="string",
            description="Or the traffic since this time, e.g. a deploy's (ISO 8601, UTC unless "
            "it says otherwise; empty: the window)",
        ),
    },
) as dag:
    check = ConveyorDockerOperator(
        task_id="check_drift",
        # The image's params.yaml (what every retrain run starts from), not the workspace's: that
        # one exists only after a first retrain and is rewritten by each retrain task.
        command=[
            "python",
            "-m",
            "pipelines.monitor",
            "--params",
            IMAGE_PARAMS,
            "{{ '--since=' ~ params.since if params.since else '--window=' ~ params.window }}",
        ],
        extra_env={
            "PROMETHEUS_URL": setting("PROMETHEUS_URL"),
            "PUSHGATEWAY_URL": setting("PUSHGATEWAY_URL"),
            "MONITOR_PLOT_DIR": f"{WORKSPACE}/reports/drift",
        },
        json_xcom=True,
        retries=0,  # the next check comes soon; a retry would only repeat a stale window
        doc_md="PSI per feature of each served model version; XCom: verdict, reason, PSI.",
    )

    @task(
        inlets=[landing_asset(), drift_asset()],
        outlets=[drift_asset()],
        doc_md="Drift: emit the drift event (`extra`: date and source of the newest landed "
        "batch, model, version, PSI, reason). "
        "Skipped when there is no drift or this version already asked.",
    )
    def request_retrain(summary: dict) -> dict:
        if summary.get("verdict") != "drift":
            raise AirflowSkipException(f"no drift: {summary.get('reason')}")
        context = get_current_context()
        version = str(summary["drift_version"])
        drift, landing = drift_asset(), landing_asset()
        earlier = context["inlet_events"][drift].ascending(False).limit(RECENT_EVENTS)
        if any(str((e.extra or {}).get("model_version")) == version for e in earlier):
            raise AirflowSkipException(
                f"v{version} already asked for a retrain: {summary['reason']}"
            )
        # The newest landed batch's date and source (retraining can only help with the newest
        # data), else this run's day with the configured source.
        landed = list(context["inlet_events"][landing].ascending(False).limit(1))
        batch = (landed[0].extra or {}) if landed else {}
        today = (context.get("logical_date") or context["dag_run"].run_after).date().isoformat()
        result = next(r for r in summary["versions"] if r["model_version"] == version)
        extra = {
            "date": batch.get("date") or today,
            "source": batch.get("source") or "",
            "model_name": summary["model_name"],
            "model_version": version,
            "psi": result["psi"],
            "threshold": summary["threshold"],
            "reason": summary["reason"],
        }
        context["outlet_events"][drift].extra = extra
        return extra

    request_retrain(check.output)
