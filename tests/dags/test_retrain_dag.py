"""DAG integrity of `retrain`, without Docker: it parses, its graph and branching are as
designed, and every DockerOperator runs the project's training image on the workspace volume.

Needs apache-airflow (the `airflow` group): `make test-dags` runs this file in its own venv
(.build/venv-airflow); the host venv (no airflow) skips it with that reason.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

pytest.importorskip(
    "airflow.providers.docker", reason="apache-airflow is not installed here: run `make test-dags`"
)

from airflow.dag_processing.dagbag import BundleDagBag  # noqa: E402
from airflow.providers.docker.operators.docker import DockerOperator  # noqa: E402

from tests.dags.conftest import STACK_ENV  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
TRAIN_IMAGE = "conveyor/train:0123456789ab"
RELEASE_IMAGE = "conveyor/release:0123456789ab"


# What Compose gives the Airflow containers (tests/dags/conftest.py renders it from .env.example).
SETTINGS = {**STACK_ENV, "TRAIN_IMAGE": TRAIN_IMAGE, "RELEASE_IMAGE": RELEASE_IMAGE}

EDGES = {
    "resolve_trigger": {"prepare_workspace"},
    "prepare_workspace": {"ingest"},
    "ingest": {"validate"},
    "validate": {"train"},
    "train": {"evaluate"},
    "evaluate": {"dvc_push"},
    "dvc_push": {"register"},
    "register": {"decide_deploy"},
    "decide_deploy": {"build_serving_image", "keep_current_model"},
    "build_serving_image": {"deploy"},
    "deploy": {"summarize"},
    "keep_current_model": {"summarize"},
    "summarize": set(),
}


def _load(monkeypatch, tmp_path, **env):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    for key, value in {**SETTINGS, **env}.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    sys.modules.pop("conveyor_operator", None)
    bag = BundleDagBag(str(DAGS), bundle_path=DAGS)
    return bag


@pytest.fixture
def bag(monkeypatch, tmp_path):
    return _load(monkeypatch, tmp_path)


@pytest.fixture
def dag(bag):
    return bag.dags["retrain"]


def test_dagbag_has_no_import_errors_and_the_three_dags(bag):
    assert bag.import_errors == {}
    assert sorted(bag.dags) == ["landing", "monitor", "retrain"]  # data-aware DAGs: issue 14


@pytest.mark.parametrize("missing", ["CONVEYOR_TASK_NETWORK", "DOCKER_HOST", "TRAIN_IMAGE"])
def test_a_missing_setting_fails_the_import_naming_it(monkeypatch, tmp_path, missing):
    bag = _load(monkeypatch, tmp_path, **{missing: None})
    errors = "\n".join(bag.import_errors.values())
    assert f"{missing} is not set" in errors, errors


def test_task_graph(dag):
    assert {t.task_id: set(t.downstream_task_ids) for t in dag.tasks} == EDGES


def test_run_policy_and_params(dag):
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    # the clock OR a landing/drift asset event (dags/conveyor_assets.py)
    assert type(dag.schedule).__name__ == "AssetOrTimeSchedule"
    assert dag.schedule.timetable.expression == "0 0 * * *"  # @daily
    assert {a.name for a in dag.schedule.asset_condition.objects} == {
        "conveyor-landing-batch",
        "conveyor-input-drift",
    }
    assert set(dag.params) == {
        "force_deploy",
        "source",
        "train",
        "min_improvement",
        "deploy_image",
        "ready_timeout",
    }
    assert dag.params["force_deploy"] is False
    assert dag.doc_md and "quarantined" in dag.doc_md
    assert all(t.doc_md for t in dag.tasks), [t.task_id for t in dag.tasks if not t.doc_md]


def test_schedule_is_configurable(monkeypatch, tmp_path):
    dag = _load(monkeypatch, tmp_path, RETRAIN_SCHEDULE="0 3 * * *").dags["retrain"]
    assert dag.schedule.timetable.expression == "0 3 * * *"
    dag = _load(monkeypatch, tmp_path, RETRAIN_SCHEDULE="none").dags["retrain"]
    assert type(dag.schedule).__name__ == "AssetAny"  # no clock: data and drift only


def test_the_note_task_is_a_teardown_so_the_run_state_is_the_work_tasks(dag):
    """summarize runs whatever happened, and its success never hides a failed deploy."""
    note = dag.get_task("summarize")
    assert note.is_teardown and note.trigger_rule == "all_done_setup_success"
    assert not note.on_failure_fail_dagrun


def test_every_docker_task_uses_its_image_and_the_workspace(dag):
    docker_tasks = [t for t in dag.tasks if isinstance(t, DockerOperator)]
    python_tasks = {"resolve_trigger", "decide_deploy", "keep_current_model", "summarize"}
    assert {t.task_id for t in docker_tasks} == set(EDGES) - python_tasks
    for t in docker_tasks:
        # build and deploy run release code (release/), everything else the ML stages.
        release = t.task_id in ("build_serving_image", "deploy")
        image = RELEASE_IMAGE if release else TRAIN_IMAGE
        assert t.image == image, t.task_id
        assert t.force_pull is False and t.mount_tmp_dir is False, t.task_id
        assert t.auto_remove == "success", t.task_id
        mounts = {m["Target"]: (m["Source"], m["Type"]) for m in t.mounts}
        assert mounts["/workspace"] == (SETTINGS["CONVEYOR_WORKSPACE_VOLUME"], "volume")
        assert t.environment["CONVEYOR_IMAGE"] == image, t.task_id
        assert t.network_mode, t.task_id
        assert t.retries >= 1 and t.retry_exponential_backoff, t.task_id
        assert "AWS_SECRET_ACCESS_KEY" not in t.environment, t.task_id


def test_validate_skips_on_quarantine_and_deploy_sees_the_gateway(dag):
    assert 3 in dag.get_task("validate").skip_on_exit_code
    deploy = dag.get_task("deploy")
    targets = {m["Target"]: m["Source"] for m in deploy.mounts}
    assert targets["/gateway"] == SETTINGS["CONVEYOR_GATEWAY_VOLUME"]
    assert deploy.environment["DOCKER_HOST"] == SETTINGS["DOCKER_HOST"]
    assert deploy.network_mode == SETTINGS["CONVEYOR_SERVING_NETWORK"]
    assert deploy.environment["GATEWAY_CONTAINER"] == SETTINGS["CONVEYOR_GATEWAY_CONTAINER"]
    assert dag.get_task("register").do_xcom_push is True


@pytest.mark.parametrize(
    ("registration", "params", "expected"),
    [
        ({"decision": "promoted"}, {}, "build_serving_image"),
        ({"decision": "already_champion"}, {}, "build_serving_image"),
        ({"decision": "challenger"}, {}, "keep_current_model"),
        ({"decision": "challenger"}, {"force_deploy": True}, "build_serving_image"),
        (
            {"decision": "challenger"},
            {"deploy_image": "conveyor/serving-model:x-v1"},
            "build_serving_image",
        ),
    ],
)
def test_branch_deploys_only_a_promoted_or_forced_model(dag, registration, params, expected):
    full = {"force_deploy": False, "deploy_image": "", **params}
    decide = dag.get_task("decide_deploy").python_callable
    assert decide(registration, params=full) == expected


def test_commands_render_with_the_runs_params(dag):
    ingest = dag.get_task("ingest")

    class TI:  # resolve_trigger's XCom: the run's date and source
        @staticmethod
        def xcom_pull(task_ids):
            assert task_ids == "resolve_trigger"
            return {"date": "2026-01-02", "source": "s3://landing/{date}.csv"}

    context = {
        "ti": TI(),
        "params": {
            "source": "s3://landing/{date}.csv",
            "train": {"estimator": "random_forest"},
            "min_improvement": None,
        },
    }
    rendered = ingest.render_template(ingest.command, context)
    assert rendered[:4] == ["python", "-m", "pipelines.workspace", "run"]
    args = dict(zip(rendered[4:-6:2], rendered[5:-6:2], strict=True))
    assert args["--date"] == "2026-01-02"
    assert args["--source"] == "s3://landing/{date}.csv"
    assert args["--train-json"] == '{"estimator": "random_forest"}'
    assert rendered[-6:] == ["--", "dvc", "repro", "--force", "--single-item", "ingest"]


def test_operator_reads_exit_codes_and_reasons():
    ops = importlib.import_module("conveyor_operator")
    exc = ops.DockerContainerFailedException("Docker container failed: {'StatusCode': 4}")
    assert ops._exit_code(exc) == 4
    logs = [
        b"deploy: starting x",
        b"deploy: failed: new container not ready after 5 s",
        b"Traceback-free log tail",
    ]
    assert ops._last_line(logs) == "deploy: failed: new container not ready after 5 s"
    assert ops._last_line([b"only line"]) == "only line"
    summary = ["deploy: ready", '{"changed": false}', "", "INFO: some trailing log line"]
    assert ops._last_json(summary, "deploy") == {"changed": False}
    # stderr's fragment merged into stdout's summary line, before or after it
    merged = (
        "deploy: svc runs img on {'node-2': 2} after 45.9 s" + '{"changed": true, "n": {"a": 1}}'
    )
    assert ops._last_json([merged, ""], "deploy") == {"changed": True, "n": {"a": 1}}
    assert ops._last_json(['{"changed": true}deploy: done'], "deploy") == {"changed": True}
    with pytest.raises(ops.AirflowFailException, match="no JSON summary"):
        ops._last_json(["{not json", "text"], "deploy")
