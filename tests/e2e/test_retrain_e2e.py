"""The `retrain` DAG end to end on the real stack, driven through Airflow's REST API only.

1. a first date: the run succeeds, serving (through the gateway on 127.0.0.1) answers with the
   model version the run registered, and Prometheus scrapes the container the run deployed;
2. that run re-run from `ingest`: no new model version, no rebuilt image, no extra dataset
   file, the deploy a no-op;
3. a batch uploaded to the landing bucket starts a run for its date by itself (the `landing`
   DAG's asset event), whose model is deployed while an open-loop client sends requests
   throughout, none of which fails; Prometheus then scrapes the new container and drops the old;
4. a bad batch: quarantined by validate (the log names the column and the rule), everything
   downstream skipped, serving unchanged;
5. a deploy of an image that never becomes ready (`deploy_image`, the rollback/hotfix param,
   pointed at an image the test builds with a model directory that does not exist): the run
   fails, the new container is gone, the old model keeps answering without a failed request.

The gate keeping a worse model out is checked on the fault run (tests/e2e/test_faults.py): that
run trains one on purpose. They run on the test suite's own stack (`test_stack`,
tests/helpers/stack.py), never the user's. Every wait is bounded.
"""

from __future__ import annotations

import datetime as dt
import io
import tarfile
import time
import uuid

import pytest

from pipelines import demo
from tests.e2e.conftest import (
    RUN_TIMEOUT,
    get_json,
    model_versions,
    post_json,
    prometheus_targets,
    timestamp,
    upload_batch,
    wait_for,
    wait_serving_ready,
)
from tests.helpers import measured
from tests.helpers.load import OpenLoopClient

pytestmark = pytest.mark.e2e

DOWNSTREAM_OF_VALIDATE = (
    "train",
    "evaluate",
    "dvc_push",
    "register",
    "decide_deploy",
    "build_serving_image",
    "deploy",
    "keep_current_model",
)
LANDING_DAY = "2026-03-02"
LANDING_START_TIMEOUT = 180  # upload -> retrain run created (15 s poke + scheduler loops)
TARGET_TIMEOUT = 90  # deploy -> Prometheus target up / gone (15 s SD refresh + scrape)


@pytest.fixture(scope="module")
def state() -> dict:
    return {}


def serving_targets(stack) -> dict[str, str]:
    """Prometheus's serving targets: container name -> health."""
    return prometheus_targets(stack, "serving")


def test_first_date_is_trained_registered_served_and_scraped(
    runs, state, record, serving_url, test_stack
):
    run = runs.run("2026-03-01", {"force_deploy": True}, "first")
    assert run["state"] == "success", runs.explain(run)
    registration = runs.xcom(run["dag_run_id"], "register")
    # The stack is fresh: no champion yet, so the first model is promoted.
    assert registration["decision"] == "promoted", registration
    assert run["tasks"]["deploy"]["state"] == "success", runs.explain(run)
    version = str(registration["version"])
    build = runs.xcom(run["dag_run_id"], "build_serving_image")
    assert build["image"].endswith(f"-v{version}") and build["run_id"] == registration["run_id"]
    # The stack's own names: the baked image in its repository, lineage names the task's image.
    assert build["image"].startswith(test_stack.env["CONVEYOR_MODEL_IMAGE_REPOSITORY"] + ":")
    tags = test_stack.mlflow().get_run(registration["run_id"]).data.tags
    train_image = test_stack.compose("exec", "-T", "airflow-scheduler", "printenv", "TRAIN_IMAGE")
    assert tags["image"] == train_image.stdout.strip() != ""

    wait_serving_ready(serving_url)
    meta = get_json(f"{serving_url}/metadata")
    assert str(meta["model_version"]) == version
    answer = post_json(f"{serving_url}/predict", record)
    assert str(answer["model_version"]) == version
    assert len(answer["predictions"]) == 1
    container = runs.xcom(run["dag_run_id"], "deploy")["container"]
    wait_for(
        lambda: serving_targets(test_stack).get(container) == "up",
        TARGET_TIMEOUT,
        f"{container} an up serving target in Prometheus",
    )
    state.update(version=version, image=build["image"], container=container, first=run)


def _dataset_files(stack) -> list[str]:
    """The versioned dataset on the workspace volume, read by a throwaway container."""
    import docker

    from tests.helpers.stack import ROOT

    base = dict(
        line.split("=", 1)
        for line in (ROOT / ".build/base-images.env").read_text().split()
        if "=" in line
    )
    out = docker.from_env().containers.run(
        base["DEBIAN_IMAGE"],
        ["find", "/w/data/dataset", "-name", "*.parquet"],
        remove=True,
        volumes={stack.env["CONVEYOR_WORKSPACE_VOLUME"]: {"bind": "/w", "mode": "ro"}},
    )
    return sorted(path.rsplit("/", 1)[-1] for path in out.decode().split())


def test_rerunning_a_run_duplicates_no_data_model_version_or_image(
    runs, state, serving_url, test_stack
):
    assert state.get("first"), "needs the first run"
    run_id = state["first"]["dag_run_id"]
    registration = runs.xcom(run_id, "register")
    build = runs.xcom(run_id, "build_serving_image")
    name = registration["model_name"]
    before = (model_versions(test_stack, name), _dataset_files(test_stack))
    assert "2026-03-01.parquet" in before[1]

    # Everything from ingest on, once more, for the same logical date.
    again = runs.rerun(run_id, "ingest")
    assert again["state"] == "success", runs.explain(again)
    assert again["tasks"]["ingest"]["try_number"] == 2
    registration2 = runs.xcom(run_id, "register")
    build2 = runs.xcom(run_id, "build_serving_image")
    deploy2 = runs.xcom(run_id, "deploy")
    # Nothing changed upstream, so DVC ran no stage again: `register` emitted the first try's
    # record as it was (same version, same MLflow run, same decision), registering nothing.
    assert registration2 == registration
    assert build2["reused"] is True and build2["image_id"] == build["image_id"]
    assert deploy2["changed"] is False
    assert (model_versions(test_stack, name), _dataset_files(test_stack)) == before
    assert str(get_json(f"{serving_url}/metadata")["model_version"]) == registration["version"]


def _asset_runs_since(client, since: float) -> list[dict]:
    """`retrain` runs an asset event started at or after `since` (Unix time)."""
    return [
        run
        for run in client.dag_runs("retrain", limit=50)
        if run.get("run_type") == "asset_triggered"
        and (timestamp(run.get("run_after") or run.get("queued_at")) or 0) >= since
    ]


def test_a_landed_batch_starts_its_run_and_deploys_with_zero_failed_requests(
    runs, state, record, serving_url, test_stack, data_aware_dags, request
):
    assert state.get("version"), "needs the first run"
    client, mlflow = runs.client, test_stack.mlflow()
    # No champion: the gate promotes the landed batch's model, so this run deploys.
    mlflow.delete_registered_model_alias(test_stack.env["MODEL_NAME"], "champion")
    waiting = f"e2e-{runs.tag}-landing"
    client.trigger("landing", f"{LANDING_DAY}T00:00:00Z", {}, run_id=waiting)
    key = test_stack.env["LANDING_KEY_TEMPLATE"].replace("{date}", LANDING_DAY)
    buf = io.StringIO()
    demo.generate(dt.date.fromisoformat(LANDING_DAY), seed=7, rows=3000).to_csv(buf, index=False)
    with OpenLoopClient(
        f"{serving_url}/predict", record, rate=20, max_requests=int(20 * 2 * RUN_TIMEOUT)
    ) as load:
        since = time.time()
        test_stack.s3().put_object(
            Bucket=test_stack.env["S3_BUCKET_LANDING"], Key=key, Body=buf.getvalue().encode()
        )
        started = wait_for(
            lambda: _asset_runs_since(client, since), LANDING_START_TIMEOUT, "a landing run"
        )[0]
        measured.note(request, "landing: upload -> retrain run created", time.time() - since)
        run = runs.wait(started["dag_run_id"])
        time.sleep(2)
    result = load.result
    assert run["state"] == "success", runs.explain(run)
    run_id = run["dag_run_id"]
    trigger = runs.xcom(run_id, "resolve_trigger")
    assert trigger["trigger"] == "landing" and trigger["date"] == LANDING_DAY, trigger
    assert trigger["source"].endswith(test_stack.env["LANDING_KEY_TEMPLATE"]), trigger
    registration = runs.xcom(run_id, "register")
    assert registration["decision"] == "promoted", registration
    new_version = str(registration["version"])
    assert new_version != state["version"]
    assert run["tasks"]["deploy"]["state"] == "success"
    note = client.dag_run("retrain", run_id).get("note") or ""
    assert f"retrain {LANDING_DAY}** (landing)" in note and "**deployed**" in note, note

    # Zero failed requests across the swap, the old version's answers, then only the new one's.
    assert result.sent > 100
    assert result.failures == [], f"{len(result.failures)} of {result.sent}: {result.failures[:5]}"
    assert result.completed[0] == state["version"] and set(result.versions) == {
        state["version"],
        new_version,
    }
    assert set(result.completed[-20:]) == {new_version}
    assert str(get_json(f"{serving_url}/metadata")["model_version"]) == new_version

    # Prometheus follows the deploy: the new container is scraped, the old one is gone.
    deployed = runs.xcom(run_id, "deploy")
    assert deployed["changed"] and deployed["previous"] == state["container"], deployed
    new, old = deployed["container"], state["container"]
    wait_for(lambda: serving_targets(test_stack).get(new) == "up", TARGET_TIMEOUT, f"{new} up")
    wait_for(lambda: old not in serving_targets(test_stack), TARGET_TIMEOUT, f"{old} gone")
    state.update(version=new_version, container=new)


def test_a_bad_batch_is_quarantined_and_nothing_downstream_runs(
    runs, served, serving_url, test_stack
):
    def out_of_range(frame):
        frame = frame.copy()
        frame["age"] = 500  # validation.ranges.age is [16, 110]
        return frame

    source = upload_batch(test_stack, "2026-03-04", f"e2e-{runs.tag}-bad", mutate=out_of_range)
    run = runs.run("2026-03-04", {"source": source}, "bad")
    assert run["state"] == "success", runs.explain(run)
    tasks = run["tasks"]
    assert tasks["ingest"]["state"] == "success"
    assert tasks["validate"]["state"] == "skipped", runs.explain(run)
    assert {t: tasks[t]["state"] for t in DOWNSTREAM_OF_VALIDATE} == {
        t: "skipped" for t in DOWNSTREAM_OF_VALIDATE
    }
    # The reason, in the task's log: every row fails the age range, and nothing else fails.
    log = runs.log(run["dag_run_id"], "validate", tasks["validate"]["try_number"])
    assert "batch 2026-03-04 failed 1 check(s): in_range(16.0, 110.0)(age); moved to" in log, log[
        -2000:
    ]
    note = runs.client.dag_run("retrain", run["dag_run_id"]).get("note") or ""
    assert "**quarantined**" in note, note
    assert str(get_json(f"{serving_url}/metadata")["model_version"]) == served


def _unready_image(base: str) -> str:
    """The serving image with a model directory that does not exist: it starts, never ready."""
    import docker

    tag = f"conveyor-e2e/unready:{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {base}\nENV MODEL_DIR=/nonexistent-model\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    docker.from_env().images.build(
        fileobj=buf,
        custom_context=True,
        tag=tag,
        pull=False,
        rm=True,
        labels={"io.conveyor.model.version": "999"},
    )
    return tag


def test_an_image_that_never_becomes_ready_fails_the_run_and_the_old_model_serves_on(
    runs, served, record, serving_url, project_images
):
    import docker

    bad = _unready_image(project_images["SERVING_IMAGE"])
    client = docker.from_env()
    try:
        conf = {"deploy_image": bad, "ready_timeout": 5, "min_improvement": 1000.0}
        with OpenLoopClient(
            f"{serving_url}/predict", record, rate=20, max_requests=int(20 * RUN_TIMEOUT)
        ) as load:
            run = runs.run("2026-03-05", conf, "unready")
        assert run["state"] == "failed", runs.explain(run)
        deploy = run["tasks"]["deploy"]
        assert deploy["state"] == "failed" and deploy["try_number"] == 1  # not retried
        log = runs.log(run["dag_run_id"], "deploy", 1)
        assert "not ready" in log and "old container keeps serving" in log, log[-2000:]
        assert client.containers.list(all=True, filters={"ancestor": bad}) == []
        assert load.result.sent > 100
        assert load.result.failures == [], load.result.failures[:5]
        assert set(load.result.versions) == {served}
        assert str(get_json(f"{serving_url}/metadata")["model_version"]) == served
        assert str(post_json(f"{serving_url}/predict", record)["model_version"]) == served
    finally:
        for c in client.containers.list(all=True, filters={"ancestor": bad}):
            c.remove(force=True)
        client.images.remove(bad, force=True)
