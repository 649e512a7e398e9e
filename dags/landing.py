"""Batches landing in the landing bucket start `retrain` runs.

One run of this DAG per date waits for that date's batch object, `s3://<S3_BUCKET_LANDING>/
<LANDING_KEY_TEMPLATE with {date}>`, with the Amazon provider's S3KeySensor in deferrable mode:
the wait is an S3KeyTrigger in Airflow's triggerer (no worker slot, no loop of ours), against any
S3-compatible store (endpoint and keys from the AWS_* environment). Once the object is there,
`announce_batch` emits an event on the landing asset (dags/conveyor_assets.py) whose `extra`
carries the date and the source URI; `retrain` is scheduled on that asset and reads both.

Runs come from LANDING_SCHEDULE (one per day with @daily) or by hand for any date (param
`date`, e.g. a late batch). Why not an AssetWatcher: a watcher needs an event trigger
(BaseEventTrigger); for S3 the providers have those only for SQS/Kinesis notifications, which
an S3-compatible store such as SeaweedFS does not send.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import DAG, Param, get_current_context, task
from conveyor_assets import clock, landing_asset
from conveyor_operator import setting

BUCKET = setting("S3_BUCKET_LANDING")
KEY_TEMPLATE = setting("LANDING_KEY_TEMPLATE")  # e.g. daily/{date}.csv
SCHEDULE = setting("LANDING_SCHEDULE")  # cron or preset; `none`: by hand only
DATE = "{{ params.date or ds }}"

with DAG(
    dag_id="landing",
    description="Wait (deferred) for a date's batch in the landing bucket, then ask for a retrain",
    schedule=clock(SCHEDULE),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=7,  # a week of dates may wait at once
    doc_md=__doc__,
    tags=["conveyor", "data"],
    params={
        "date": Param(
            "", type="string", description="Batch date YYYY-MM-DD (empty: the run's logical date)"
        )
    },
) as dag:
    wait = S3KeySensor(
        task_id="wait_for_batch",
        bucket_name=BUCKET,
        bucket_key=KEY_TEMPLATE.replace("{date}", DATE),
        aws_conn_id=None,  # boto's default chain: AWS_* of the worker/triggerer environment
        deferrable=True,
        poke_interval=15,
        timeout=dt.timedelta(days=2).total_seconds(),
        doc_md="Deferred until the date's object exists (S3KeyTrigger in the triggerer).",
    )

    @task(
        outlets=[landing_asset()],
        doc_md="Emit the landing event: `extra` = date, source URI template, key, reason.",
    )
    def announce_batch() -> dict:
        context = get_current_context()
        date = context["params"]["date"] or context["ds"]
        dt.date.fromisoformat(date)
        key = KEY_TEMPLATE.replace("{date}", date)
        extra = {
            "date": date,
            "source": f"s3://{BUCKET}/{KEY_TEMPLATE}",
            "key": key,
            "reason": f"batch landed: s3://{BUCKET}/{key}",
        }
        context["outlet_events"][landing_asset()].extra = extra
        return extra

    wait >> announce_batch()
