"""What starts a `retrain` run besides its clock, and how a run learns its date and reason.

Two assets (Airflow 3 data-aware scheduling):

  LANDING  s3://<S3_BUCKET_LANDING>/<prefix>   a batch object landed (prefix: LANDING_KEY_TEMPLATE's
           folder, e.g. `daily` for daily/{date}.csv); emitted by the
           `landing` DAG once its deferrable S3 sensor saw the date's object
  DRIFT    conveyor://drift/<MODEL_NAME>                    served inputs drifted; emitted by the
           `monitor` DAG when PSI passed `monitor.psi_threshold`

`retrain_schedule(cron)` is the retrain DAG's schedule: its cron (RETRAIN_SCHEDULE) OR an event
on either asset. An asset-triggered run has no logical date (Airflow 3), so every run starts with
`resolve_trigger`, whose XCom says what the run works on:

  {"date": "YYYY-MM-DD", "source": "" | "s3://.../{date}.csv", "trigger": "schedule" | "manual"
   | "landing" | "drift", "reason": "<one line>", "events": [<the triggering events' extra>]}

and the DAG's tasks read `{{ ti.xcom_pull(task_ids="resolve_trigger")["date"] }}` where they read
`{{ ds }}` before. The date comes from, in this order: `conf["date"]`; the run's logical date
(scheduled and manual runs); the newest `extra["date"]` of the triggering events. The contract of
an event's `extra` (what the emitting DAGs write):

  landing: {"date", "source" (the source URI template, `{date}` left in), "key", "reason"}
  drift:   {"date", "source" (the newest landed batch's, or ""), "model_name", "model_version",
            "psi" {feature: value}, "threshold", "reason"}
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from airflow.sdk import Asset
from conveyor_operator import setting

LANDING_ASSET = "conveyor-landing-batch"
DRIFT_ASSET = "conveyor-input-drift"


def landing_asset() -> Asset:
    bucket, template = setting("S3_BUCKET_LANDING"), setting("LANDING_KEY_TEMPLATE")
    if "{date}" not in template:
        raise RuntimeError(f"LANDING_KEY_TEMPLATE {template!r} has no {{date}} placeholder")
    folder = template.split("{date}", 1)[0].rpartition("/")[0]
    return Asset(name=LANDING_ASSET, uri=f"s3://{bucket}/{folder}".rstrip("/"))


def drift_asset() -> Asset:
    return Asset(name=DRIFT_ASSET, uri=f"conveyor://drift/{setting('MODEL_NAME')}")


def clock(cron: str):
    """A schedule setting (cron expression or preset such as @daily) as a UTC timetable; `none`
    or `manual`: None (runs only when started by hand or by an asset event)."""
    from airflow.sdk import CronTriggerTimetable

    if cron.strip().lower() in ("none", "manual"):
        return None
    return CronTriggerTimetable(cron, timezone="UTC")


def retrain_schedule(cron: str):
    """The retrain DAG's `schedule`: cron OR a landing OR a drift event (the assets alone when
    the cron is `none`)."""
    from airflow.sdk import AssetOrTimeSchedule

    assets = landing_asset() | drift_asset()
    timetable = clock(cron)
    return assets if timetable is None else AssetOrTimeSchedule(timetable=timetable, assets=assets)


# ----------------------------------------------------------------------------- the run's trigger
def _event_records(events: Mapping[Any, Iterable[Any]] | None) -> list[dict[str, Any]]:
    """Triggering asset events as plain dicts (asset name, time, extra), oldest first."""
    out = []
    for asset, items in (events or {}).items():
        name = getattr(asset, "name", None) or str(asset)
        for event in items:
            stamp = getattr(event, "timestamp", None)
            out.append(
                {
                    "asset": name,
                    "timestamp": stamp.isoformat() if stamp else None,
                    "extra": dict(getattr(event, "extra", None) or {}),
                }
            )
    return sorted(out, key=lambda e: e["timestamp"] or "")


def resolve(
    conf: Mapping[str, Any] | None,
    logical_date: dt.datetime | None,
    events: Mapping[Any, Iterable[Any]] | None,
    run_type: str = "",
) -> dict[str, Any]:
    """Date, source, kind and reason of a retrain run (see the module docstring)."""
    conf = dict(conf or {})
    records = _event_records(events)
    dated = [e for e in records if e["extra"].get("date")]
    newest = max(dated, key=lambda e: (e["extra"]["date"], e["timestamp"] or "")) if dated else None
    if conf.get("date"):
        date, kind = str(conf["date"]), "manual"
    elif logical_date is not None:
        date = logical_date.date().isoformat()
        kind = "schedule" if run_type == "scheduled" else "manual"
    elif newest is not None:
        date = str(newest["extra"]["date"])
        kind = "drift" if newest["asset"] == DRIFT_ASSET else "landing"
    else:
        raise ValueError(
            "the run has no date: no conf['date'], no logical date and no "
            "triggering asset event with extra['date']"
        )
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        raise ValueError(f"run date {date!r} is not YYYY-MM-DD") from None
    source = str(conf.get("source") or "")
    if not source and newest is not None and kind in ("landing", "drift"):
        source = str(newest["extra"].get("source") or "")
    reasons = [str(e["extra"]["reason"]) for e in records if e["extra"].get("reason")]
    reason = (
        str(conf.get("reason") or "")
        or "; ".join(reasons)
        or {"schedule": "scheduled run", "manual": "manual run"}.get(kind, kind)
    )
    return {
        "date": date,
        "source": source,
        "trigger": kind,
        "reason": reason,
        "events": [e["extra"] for e in records],
    }


def resolve_trigger_task():
    """The first task of `retrain`: its XCom is `resolve(...)` of this run (see above)."""
    from airflow.sdk import get_current_context, task

    @task(
        task_id="resolve_trigger",
        doc_md="What this run works on and why: date, source, trigger (schedule, manual, "
        "landing, drift) and reason. Asset-triggered runs have no logical date: the "
        "date comes from the triggering event's `extra`.",
    )
    def resolve_trigger() -> dict[str, Any]:
        context = get_current_context()
        dag_run = context["dag_run"]
        run_type = getattr(dag_run.run_type, "value", dag_run.run_type)
        result = resolve(
            dag_run.conf,
            context.get("logical_date"),
            context.get("triggering_asset_events"),
            str(run_type),
        )
        print(f"retrain {result['date']}: {result['trigger']}: {result['reason']}")
        return result

    return resolve_trigger()
