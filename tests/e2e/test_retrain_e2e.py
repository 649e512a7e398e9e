"""The `retrain` DAG end to end on the real stack, driven through Airflow's REST API only.

1. a first date: the run succeeds, serving (through the gateway on 127.0.0.1) answers with the
   model version the run registered;
2. a second date whose batch the test uploads to the landing bucket: the promoted model is
   deployed while an open-loop client sends requests throughout, none of which fails;
3. a run whose model cannot pass the gate (huge `min_improvement`): success, no deploy, serving
   unchanged;
4. a bad batch: quarantined by validate, everything downstream skipped, serving unchanged;
5. a deploy of an image that never becomes ready (`deploy_image`, the rollback/hotfix param,
   pointed at an image the test builds with a model directory that does not exist): the run
   fails, the new container is gone, the old model keeps answering without a failed request;
6. a run re-run from `ingest` for the same date: no new model version, no rebuilt image, no
   extra dataset file, the deploy a no-op.

They run on the test suite's own stack (`test_stack`, tests/helpers/stack.py), never the user's.
Every wait is bounded.
"""

from __future__ import annotations

import io
import tarfile
import time
import uuid

import pytest

from tests.e2e.conftest import (
    RUN_TIMEOUT,
    get_json,
    model_versions,
    post_json,
    upload_batch,
    wait_serving_ready,
)
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


@pytest.fixture(scope="module")
def state() -> dict:
    return {}


def test_first_date_is_trained_registered_and_served(runs, state, record, serving_url):
    run = runs.run("2026-03-01", {"force_deploy": True}, "first")
    assert run["state"] == "success", runs.explain(run)
    registration = runs.xcom(run["dag_run_id"], "register")
    assert registration["decision"] in ("promoted", "challenger", "already_champion")
    assert run["tasks"]["deploy"]["state"] == "success", runs.explain(run)
    version = str(registration["version"])
    build = runs.xcom(run["dag_run_id"], "build_serving_image")
    assert build["image"].endswith(f"-v{version}") and build["run_id"] == registration["run_id"]

    wait_serving_ready(serving_url)
    meta = get_json(f"{serving_url}/metadata")
    assert str(meta["model_version"]) == version
    answer = post_json(f"{serving_url}/predict", record)
    assert str(answer["model_version"]) == version
    assert len(answer["predictions"]) == 1
    state.update(version=version, image=build["image"])


def test_second_date_from_the_landing_bucket_deploys_with_zero_failed_requests(
    runs, state, record, serving_url, test_stack
):
    assert state.get("version"), "needs the first run"
    source = upload_batch(test_stack, "2026-03-02", f"e2e-{runs.tag}")
    # min_improvement -1: the gate promotes any candidate, so this run takes the promoted path.
    conf = {"source": source, "min_improvement": -1.0}
    with OpenLoopClient(
        f"{serving_url}/predict", record, rate=20, max_requests=int(20 * RUN_TIMEOUT)
    ) as load:
        run = runs.run("2026-03-02", conf, "second")
        time.sleep(2)
    result = load.result
    assert run["state"] == "success", runs.explain(run)
    registration = runs.xcom(run["dag_run_id"], "register")
    assert registration["decision"] == "promoted"
    new_version = str(registration["version"])
    assert new_version != state["version"]
    assert run["tasks"]["deploy"]["state"] == "success"
    assert result.sent > 100
    assert result.failures == [], f"{len(result.failures)} of {result.sent}: {result.failures[:5]}"
    assert state["version"] in result.versions and new_version in result.versions
    assert set(result.completed[-20:]) == {new_version}
    assert str(get_json(f"{serving_url}/metadata")["model_version"]) == new_version
    state.update(
        version=new_version, image=runs.xcom(run["dag_run_id"], "build_serving_image")["image"]
    )


def test_a_model_that_fails_the_gate_is_not_deployed(runs, state, serving_url):
    run = runs.run("2026-03-03", {"min_improvement": 1000.0}, "gate")
    assert run["state"] == "success", runs.explain(run)
    assert runs.xcom(run["dag_run_id"], "register")["decision"] == "challenger"
    tasks = run["tasks"]
    assert tasks["keep_current_model"]["state"] == "success"
    assert tasks["build_serving_image"]["state"] == "skipped"
    assert tasks["deploy"]["state"] == "skipped"
    assert str(get_json(f"{serving_url}/metadata")["model_version"]) == state["version"]


def test_a_bad_batch_is_quarantined_and_nothing_downstream_runs(
    runs, state, serving_url, test_stack
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
    log = runs.log(run["dag_run_id"], "validate", tasks["validate"]["try_number"])
    assert "quarantine" in log and "age" in log
    assert str(get_json(f"{serving_url}/metadata")["model_version"]) == state["version"]


def _unready_image(base: str) -> str:
    """The deployed image with a model directory that does not exist: it starts, never ready."""
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
    runs, state, record, serving_url, test_stack
):
    import docker

    assert state.get("image"), "needs a deployed image"
    bad = _unready_image(state["image"])
    client = docker.from_env()
    try:
        conf = {"deploy_image": bad, "ready_timeout": 20, "min_improvement": 1000.0}
        with OpenLoopClient(
            f"{serving_url}/predict", record, rate=20, max_requests=int(20 * RUN_TIMEOUT)
        ) as load:
            run = runs.run("2026-03-05", conf, "unready")
        assert run["state"] == "failed", runs.explain(run)
        deploy = run["tasks"]["deploy"]
        assert deploy["state"] == "failed" and deploy["try_number"] == 1  # not retried
        log = runs.log(run["dag_run_id"], "deploy", 1)
        assert "not ready" in log and "old container keeps serving" in log
        assert client.containers.list(all=True, filters={"ancestor": bad}) == []
        assert load.result.failures == [], load.result.failures[:5]
        assert set(load.result.versions) == {state["version"]}
        assert str(get_json(f"{serving_url}/metadata")["model_version"]) == state["version"]
        assert str(post_json(f"{serving_url}/predict", record)["model_version"]) == state["version"]
    finally:
        for c in client.containers.list(all=True, filters={"ancestor": bad}):
            c.remove(force=True)
        client.images.remove(bad, force=True)


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
    run = runs.run("2026-03-06", {"min_improvement": -1.0}, "rerun")
    assert run["state"] == "success", runs.explain(run)
    registration = runs.xcom(run["dag_run_id"], "register")
    build = runs.xcom(run["dag_run_id"], "build_serving_image")
    name = registration["model_name"]
    before = (model_versions(test_stack, name), _dataset_files(test_stack))

    # Everything from ingest on, once more, for the same logical date.
    again = runs.rerun(run["dag_run_id"], "ingest")
    assert again["state"] == "success", runs.explain(again)
    assert again["tasks"]["ingest"]["try_number"] == 2
    registration2 = runs.xcom(run["dag_run_id"], "register")
    build2 = runs.xcom(run["dag_run_id"], "build_serving_image")
    deploy2 = runs.xcom(run["dag_run_id"], "deploy")
    assert (registration2["version"], registration2["run_id"]) == (
        registration["version"],
        registration["run_id"],
    )
    assert build2["reused"] is True and build2["image_id"] == build["image_id"]
    assert deploy2["changed"] is False
    assert (model_versions(test_stack, name), _dataset_files(test_stack)) == before
    assert "2026-03-06.parquet" in before[1]
    assert str(get_json(f"{serving_url}/metadata")["model_version"]) == registration["version"]
