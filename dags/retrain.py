"""Conveyor's retraining DAG: a day's data to a served model. Wiring only: every step is a
command of the training image (pipelines/), run by ConveyorDockerOperator (conveyor_operator.py).
"""

from __future__ import annotations

import os

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, task
from conveyor_assets import resolve_trigger_task, retrain_schedule
from conveyor_operator import (
    EXIT_QUARANTINED,
    GATEWAY_DIR,
    WORKSPACE,
    ConveyorDockerOperator,
    gateway_mount,
    project_mount,
    setting,
    workspace_mount,
)
from conveyor_summary import summarize_task

SCHEDULE = setting("RETRAIN_SCHEDULE")
MODEL_DOCKERFILE = "serving/model.Dockerfile"  # the serving part's recipe for a baked model
# The swarm and kubernetes targets' settings, passed on to the deploy task when set.
TARGET_ENV = (
    "SWARM_DOCKER_HOST",
    "SWARM_SERVICE",
    "SWARM_REGISTRY",
    "SWARM_REGISTRY_PUSH",
    "KUBE_NAMESPACE",
    "KUBE_DEPLOYMENT",
    "KUBE_REGISTRY",
    "SERVING_REPLICAS",
    "SERVING_MAX_REPLICAS",
)

# Every ML task first gives the workspace this run's params (image defaults + overrides). The
# date and source come from resolve_trigger: an asset-triggered run has no logical date.
TRIGGER = "ti.xcom_pull(task_ids='resolve_trigger')"
RUN = [
    "python",
    "-m",
    "pipelines.workspace",
    "run",
    "--date",
    f"{{{{ {TRIGGER}['date'] }}}}",
    "--source",
    f"{{{{ {TRIGGER}['source'] }}}}",
    "--train-json",
    "{{ params.train | tojson }}",
    "--min-improvement",
    "{{ params.min_improvement }}",
]

DAG_DOC = """
# retrain

Takes the batch of the run's date from the configured source to a served model. Runs come from
the clock (`RETRAIN_SCHEDULE`), by hand, from a batch landing in the landing bucket (DAG
`landing`) or from input drift (DAG `monitor`). Every step runs as a DockerOperator task on the
shared workspace volume, the ML stages in the training image (`TRAIN_IMAGE`, pipelines/), the
image build and the deploy in the release image (`RELEASE_IMAGE`, release/); the task log shows
the container's output.

| step | what it does |
|---|---|
| `resolve_trigger` | date, source, reason: conf, logical date, or the landing/drift event |
| `prepare_workspace` | DVC project on the volume, pipeline definition from the image, S3 remote |
| `ingest` | the date's batch into `data/landing/` (`dvc repro ingest`) |
| `validate` | checks the batch; a bad one is **quarantined** and the rest of the run is skipped |
| `train`, `evaluate` | `dvc repro` of the training stages, logged to MLflow |
| `dvc_push` | data and model to the S3 remote |
| `register` | MLflow registration + quality gate; XCom: version, scores, decision |
| `decide_deploy` | promoted, or `force_deploy` / `deploy_image` set → build and deploy |
| `build_serving_image` | serving image with the model baked in, tagged with the model version |
| `deploy` | rollout on `DEPLOY_TARGET` (compose swap, Swarm update); never ready: old serves on |
| `summarize` | run note: reason, model version, gate and both scores, deployed or kept, MLflow |

**Params** (UI "Trigger DAG w/ config", REST `conf`, `make retrain DATE=... CONF='{...}'`):
`force_deploy`, `source` (e.g. `s3://landing/daily/{date}.csv`), `train` (overrides of the
`train` params, e.g. `{"estimator": "random_forest"}`), `min_improvement`, `deploy_image`
(deploy this existing image, e.g. an earlier model's, instead of building), `ready_timeout`.
"""

with DAG(
    dag_id="retrain",
    description="Ingest, validate, train, register and deploy the day's model",
    # RETRAIN_SCHEDULE, or a batch landing (DAG `landing`), or input drift (DAG `monitor`).
    schedule=retrain_schedule(SCHEDULE),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=DAG_DOC,
    tags=["conveyor", "ml"],
    params={
        "force_deploy": Param(
            False,
            type="boolean",
            description="Deploy the new model even if the gate keeps the champion",
        ),
        "source": Param(
            "",
            type="string",
            description="Batch source override: demo, a path or "
            "s3://bucket/prefix/{date}... (empty: params.yaml)",
        ),
        "train": Param({}, type="object", description="Overrides of params.yaml's `train` section"),
        "min_improvement": Param(
            None,
            type=["null", "number"],
            description="Quality-gate margin override (empty: params.yaml)",
        ),
        "deploy_image": Param(
            "",
            type="string",
            description="Deploy this existing serving image instead of building "
            "one (rollback, hotfix); implies a deploy",
        ),
        "ready_timeout": Param(
            90,
            type="integer",
            minimum=5,
            maximum=900,
            description="Seconds the new serving container has to become ready",
        ),
    },
) as dag:
    prepare = ConveyorDockerOperator(
        task_id="prepare_workspace",
        command=["python", "-m", "pipelines.workspace", "prepare"],
        doc_md="Make the workspace volume a DVC project (no git), copy `dvc.yaml` from the "
        "image, point the default remote at `DVC_REMOTE_URL`.",
    )
    ingest = ConveyorDockerOperator(
        task_id="ingest",
        command=[*RUN, "--", "dvc", "repro", "--force", "--single-item", "ingest"],
        doc_md="Read the batch of the run's date from the source into `data/landing/` "
        "(forced: the source may have changed). Idempotent: the same date replaces its "
        "rows; unchanged data changes no hash downstream.",
    )
    validate = ConveyorDockerOperator(
        task_id="validate",
        # The stage itself, not `dvc repro validate`: DVC would turn exit code 3 into 255.
        # `dvc repro train` then re-runs it under DVC (same result), keeping dvc.lock true.
        command=[*RUN, "--", "python", "-m", "pipelines.validate"],
        skip_on_exit_code=EXIT_QUARANTINED,
        doc_md="Schema, ranges, null rates, labels. A failing batch is moved to "
        "`data/quarantine/<date>/` with `report.json`; exit code 3 makes this task and "
        "everything after it **skipped** (the reason is the task's log and skip message) "
        "and the champion keeps serving.",
    )
    train = ConveyorDockerOperator(
        task_id="train",
        command=[*RUN, "--", "dvc", "repro", "train"],
        doc_md="`dvc repro train`: fit the sklearn Pipeline on the dataset up to the time-based "
        "split, log params, metrics, model and lineage to MLflow.",
    )
    evaluate = ConveyorDockerOperator(
        task_id="evaluate",
        command=[*RUN, "--", "dvc", "repro", "evaluate"],
        doc_md="`dvc repro evaluate`: holdout metrics and plots (DVC metrics/plots).",
    )
    dvc_push = ConveyorDockerOperator(
        task_id="dvc_push",
        command=[*RUN, "--", "dvc", "push"],
        doc_md="Upload data and model to the S3 remote (only missing objects: a retry resumes).",
    )
    register = ConveyorDockerOperator(
        task_id="register",
        command=[*RUN, "--emit", "reports/registration.json", "--", "dvc", "repro", "register"],
        json_xcom=True,
        doc_md="Register the model in MLflow (looked up by run id: a rerun creates no new "
        "version) and move `champion` only if it beats the current one by "
        "`min_improvement`. XCom `return_value`: version, scores, decision.",
    )

    @task.branch(
        doc_md="Deploy when the model was promoted, or when `force_deploy` or "
        "`deploy_image` asks for it; otherwise keep the current model."
    )
    def decide_deploy(registration: dict, params=None) -> str:
        # already_champion: a re-run of a run whose model was promoted (deploy is then a no-op
        # if that image is live, and finishes the job if the earlier deploy failed).
        promoted = registration.get("decision") in ("promoted", "already_champion")
        if promoted or params["force_deploy"] or params["deploy_image"]:
            return "build_serving_image"
        return "keep_current_model"

    keep = EmptyOperator(
        task_id="keep_current_model",
        doc_md="The model was not promoted: serving is left unchanged.",
    )

    serving_network = setting("CONVEYOR_SERVING_NETWORK")
    docker_api = {"DOCKER_HOST": setting("DOCKER_HOST")}
    build = ConveyorDockerOperator(
        task_id="build_serving_image",
        image=setting("RELEASE_IMAGE"),
        command=[
            "python",
            "-m",
            "release.build",
            "--workspace",
            WORKSPACE,
            "--dockerfile",
            f"/opt/conveyor/{MODEL_DOCKERFILE}",
            "--repository",
            setting("CONVEYOR_MODEL_IMAGE_REPOSITORY"),
            "--image={{ params.deploy_image }}",
        ],
        network=serving_network,
        mounts=[workspace_mount(), project_mount(MODEL_DOCKERFILE)],
        extra_env={
            **docker_api,
            "SERVING_IMAGE": setting("SERVING_IMAGE"),
            "SERVING_SKLEARN_IMAGE": setting("SERVING_SKLEARN_IMAGE"),
        },
        json_xcom=True,
        doc_md="Build `conveyor/serving-model:<name>-v<version>` FROM `SERVING_IMAGE` with the "
        "model baked in (`serving/model.Dockerfile`, classic builder via the socket "
        "proxy), labelled with its lineage (model version, MLflow run id, data version, "
        "git commit). An existing image of the same run is reused.",
    )
    deploy = ConveyorDockerOperator(
        task_id="deploy",
        # The release image (release/): deploy code lives beside, not inside, the ML stages.
        image=setting("RELEASE_IMAGE"),
        command=[
            "python",
            "-m",
            "release.deploy",
            "--image",
            "{{ ti.xcom_pull(task_ids='build_serving_image')['image'] }}",
            "--ready-timeout",
            "{{ params.ready_timeout }}",
            "--smoke-file",
            f"{WORKSPACE}/models/model/serving_input_example.json",
            "--label",
            "io.conveyor.run_id={{ run_id }}",
        ],
        network=serving_network,
        mounts=[workspace_mount(), gateway_mount()],
        json_xcom=True,
        extra_env={
            **docker_api,
            "SERVING_NETWORK": serving_network,
            "GATEWAY_CONTAINER": setting("CONVEYOR_GATEWAY_CONTAINER"),
            "SERVING_CONTAINER_PREFIX": setting("CONVEYOR_SERVING_CONTAINER_PREFIX"),
            "GATEWAY_UPSTREAM_FILE": f"{GATEWAY_DIR}/upstream.conf",
            # The release settings (release/settings.py names each one): the target and one
            # replica's size always, the swarm / kubernetes targets' own when set.
            "DEPLOY_TARGET": setting("DEPLOY_TARGET"),
            "SERVING_MEMORY_MB": setting("SERVING_MEMORY_MB"),
            "SERVING_CPUS": setting("SERVING_CPUS"),
            **{name: os.environ[name] for name in TARGET_ENV if os.environ.get(name)},
        },
        doc_md="Roll the new serving image out on `DEPLOY_TARGET` (release/deploy.py). "
        "compose: start the new container, wait for `/ready` and a smoke prediction, "
        "switch the gateway's upstream (SIGHUP), let in-flight requests finish, stop the "
        "old container; never ready: the new one is removed, the old one keeps serving. "
        "swarm: push to the swarm's registry, update the service's image (start-first, "
        "health-gated), wait until every replica runs it; never healthy: Swarm rolls back. "
        "A rejected release fails the task with the reason (exit 4, not retried). XCom: "
        "target, image, model version, changed (false: that image was already live).",
    )

    trigger = resolve_trigger_task()
    trigger >> prepare >> ingest >> validate >> train >> evaluate >> dvc_push >> register
    decide_deploy(register.output) >> [build, keep]
    build >> deploy
    # A teardown: it runs whatever happened and is left out of the run's state (a failed deploy
    # fails the run, a quarantined batch does not).
    [deploy, keep] >> summarize_task().as_teardown()
