"""The DockerOperator every Conveyor task runs as: the training image, the workspace volume, the
task network, run-scoped labels, credentials kept out of the rendered template.

Configuration comes from the Airflow containers' environment (set by Compose):

  TRAIN_IMAGE                  training image, immutable tag (from .build/images.env), required
  SERVING_IMAGE                serving base image the model is baked onto
  CONVEYOR_WORKSPACE_VOLUME    named volume mounted at /workspace   (conveyor-workspace)
  CONVEYOR_TASK_NETWORK        network of the ML tasks: MLflow, S3   (conveyor-tasks)
  CONVEYOR_SERVING_NETWORK     network of build/deploy: socket proxy, gateway, serving
                               containers                            (conveyor-serving)
  CONVEYOR_GATEWAY_VOLUME      volume holding the gateway's upstream file (conveyor-gateway)
  CONVEYOR_GATEWAY_CONTAINER   gateway container name                (conveyor-gateway)
  CONVEYOR_HOST_PROJECT_DIR    host path of the checkout (serving/model.Dockerfile is mounted
                               from it into build_serving_image)
  CONVEYOR_TASK_DOCKER_HOST    Docker API as seen from build/deploy containers
                               (tcp://docker-proxy:2375)
  DOCKER_HOST                  Docker API as seen from the scheduler (the provider reads it)
  MLFLOW_TRACKING_URI, DVC_REMOTE_URL, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION: passed to tasks
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: passed as private environment (never rendered)

Exit codes of the task commands (pipelines/common.py): 0 ok, 1 unexpected (retried),
2 bad input or configuration (failed at once: a retry cannot help), 3 quarantined batch
(`skip_on_exit_code` on validate), 4 deploy rejected: the new container never became ready
(failed at once; the old one keeps serving).
"""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta

from airflow.providers.docker.exceptions import (
    DockerContainerFailedException,
    DockerContainerFailedSkipException,
)
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from docker.types import Mount

WORKSPACE = "/workspace"
GATEWAY_DIR = "/gateway"
EXIT_BAD_INPUT = 2
EXIT_QUARANTINED = 3
EXIT_DEPLOY_REJECTED = 4
FAIL_FAST_EXIT_CODES = frozenset({EXIT_BAD_INPUT, EXIT_DEPLOY_REJECTED})

PUBLIC_ENV = ("MLFLOW_TRACKING_URI", "DVC_REMOTE_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
              "MODEL_NAME", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
PRIVATE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

RETRY_ARGS = {
    "retries": 2,
    "retry_delay": timedelta(seconds=20),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=5),
}


def setting(name: str, default: str = "") -> str:
    return os.environ.get(name, "") or default


def train_image() -> str:
    return setting("TRAIN_IMAGE")


def workspace_mount() -> Mount:
    return Mount(target=WORKSPACE, source=setting("CONVEYOR_WORKSPACE_VOLUME",
                                                  "conveyor-workspace"), type="volume")


def gateway_mount() -> Mount:
    return Mount(target=GATEWAY_DIR, source=setting("CONVEYOR_GATEWAY_VOLUME", "conveyor-gateway"),
                 type="volume")


def project_mount(relative: str, target_root: str = "/opt/conveyor") -> Mount | None:
    """A file of the repository checkout, read-only, by its HOST path (the daemon resolves bind
    sources on the host: CONVEYOR_HOST_PROJECT_DIR, set by scripts/stack.sh)."""
    host_dir = setting("CONVEYOR_HOST_PROJECT_DIR")
    if not host_dir:
        return None
    return Mount(target=f"{target_root}/{relative}", source=f"{host_dir.rstrip('/')}/{relative}",
                 type="bind", read_only=True)


def _exit_code(exc: DockerContainerFailedException) -> int | None:
    match = re.search(r"'StatusCode': (\d+)", str(exc))
    return int(match.group(1)) if match else None


_REASON = re.compile(r"^[\w.]+: (error|failed|quarantined): ")


def _last_line(logs) -> str:
    """The command's one-line reason (`<stage>: error|failed|quarantined: ...`), else its last
    non-empty output line."""
    lines = [(x.decode(errors="replace") if isinstance(x, bytes) else str(x)).strip()
             for x in logs or []]
    lines = [x for x in lines if x]
    reasons = [x for x in lines if _REASON.match(x)]
    return (reasons or lines or [""])[-1]


def _last_json(lines: list, task_id: str) -> dict:
    """The command's summary: its last output line that is a JSON object."""
    for line in reversed([str(x).strip() for x in lines if x]):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise AirflowFailException(f"{task_id}: the command printed no JSON summary line")


class ConveyorDockerOperator(DockerOperator):
    """DockerOperator with Conveyor's defaults.

    - image: TRAIN_IMAGE (never `latest`, never pulled); `mount_tmp_dir=False` (Airflow runs in
      a container: its temp dir is no path the daemon can see); the workspace named volume;
    - labels per run (dag, task, run id, try) and removal of a leftover container of the same
      task and run before starting (a scheduler that died mid-task leaves one running);
    - credentials read from the worker's environment at run time into `private_environment`;
    - exit codes 2 and 4 fail without retry; a skip shows the command's last line as reason;
    - `json_xcom=True`: the last output line that is a JSON object becomes the XCom (a dict).
    """

    def __init__(self, *, json_xcom: bool = False, extra_env: dict | None = None,
                 mounts: list | None = None, network: str | None = None, **kwargs):
        env = {name: os.environ[name] for name in PUBLIC_ENV if os.environ.get(name)}
        env.update(extra_env or {})
        kwargs.setdefault("image", train_image() or "TRAIN_IMAGE-is-not-set")
        kwargs.setdefault("do_xcom_push", json_xcom)
        kwargs.setdefault("xcom_all", json_xcom)  # all lines: the JSON one is picked in execute
        for key, value in RETRY_ARGS.items():
            kwargs.setdefault(key, value)
        super().__init__(
            environment=env,
            mounts=mounts or [workspace_mount()],
            network_mode=network or setting("CONVEYOR_TASK_NETWORK", "conveyor-tasks"),
            mount_tmp_dir=False,
            force_pull=False,
            auto_remove="success",
            working_dir=WORKSPACE,
            tty=False,
            **kwargs,
        )
        self.json_xcom = json_xcom

    def _run_labels(self, context) -> dict[str, str]:
        ti = context["ti"]
        return {
            "io.conveyor.dag_id": self.dag_id,
            "io.conveyor.task_id": self.task_id,
            "io.conveyor.run_id": context["run_id"],
            "io.conveyor.try": str(ti.try_number),
        }

    def _remove_leftovers(self, labels: dict[str, str]) -> None:
        filters = {"label": [f"{k}={labels[k]}" for k in
                             ("io.conveyor.dag_id", "io.conveyor.task_id", "io.conveyor.run_id")]}
        for leftover in self.cli.containers(all=True, filters=filters):
            self.log.warning("Removing leftover container %s of an earlier try",
                             leftover["Id"][:12])
            self.cli.remove_container(leftover["Id"], force=True)

    def execute(self, context):
        if not train_image() and self.image == "TRAIN_IMAGE-is-not-set":
            raise AirflowFailException(
                "TRAIN_IMAGE is not set in the Airflow containers' environment (Compose sets it "
                "from .build/images.env: run `make images`, then `make up`)")
        self.labels = self._run_labels(context)
        self._private_environment = {n: os.environ[n] for n in PRIVATE_ENV if os.environ.get(n)}
        self._remove_leftovers(self.labels)
        try:
            result = super().execute(context)
        except DockerContainerFailedSkipException as exc:
            raise AirflowSkipException(f"{self.task_id}: {_last_line(exc.logs)}") from exc
        except DockerContainerFailedException as exc:
            code = _exit_code(exc)
            if code in FAIL_FAST_EXIT_CODES:
                raise AirflowFailException(
                    f"{self.task_id} failed (exit {code}, not retried): {_last_line(exc.logs)}"
                ) from exc
            raise
        if self.json_xcom:
            return _last_json(result if isinstance(result, list) else [result], self.task_id)
        return result


# CONVEYOR_EXECUTION=kubernetes: the same tasks as Kubernetes pods (dags/conveyor_kubernetes.py).
EXECUTION = setting("CONVEYOR_EXECUTION", "docker")
if EXECUTION == "kubernetes":
    from conveyor_kubernetes import ConveyorPodOperator as ConveyorDockerOperator  # noqa: F401
elif EXECUTION != "docker":
    raise ValueError(f"CONVEYOR_EXECUTION={EXECUTION!r}: docker or kubernetes")
