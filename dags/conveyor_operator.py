"""The DockerOperator every Conveyor task runs as: the training image, the workspace volume, the
task network, run-scoped labels, credentials kept out of the rendered template.

Configuration comes from the Airflow containers' environment, which Compose sets from the
stack's env file (every name and its default is in .env.example; none is spelled here). A
missing variable fails the DAG's import with a message naming it:

  TRAIN_IMAGE                  training image, immutable tag (from .build/images.env)
  SERVING_IMAGE                serving base image the model is baked onto
  CONVEYOR_WORKSPACE_VOLUME    named volume mounted at /workspace
  CONVEYOR_TASK_NETWORK        network of the ML tasks: MLflow, S3
  CONVEYOR_SERVING_NETWORK     network of build/deploy: socket proxy, gateway, serving containers
  CONVEYOR_GATEWAY_VOLUME      volume holding the gateway's upstream file
  CONVEYOR_GATEWAY_CONTAINER   gateway container name
  CONVEYOR_SERVING_CONTAINER_PREFIX, CONVEYOR_MODEL_IMAGE_REPOSITORY: names of what deploys make
  CONVEYOR_TASK_MEMORY_LIMIT   memory limit of every task container (e.g. 2g); a task killed
                               at it fails at once, saying so
  CONVEYOR_HOST_PROJECT_DIR    host path of the checkout (serving/model.Dockerfile is mounted
                               from it into build_serving_image)
  DOCKER_HOST                  Docker API (the socket proxy) for the provider and for the
                               build/deploy task containers
  MLFLOW_TRACKING_URI, DVC_REMOTE_URL, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION: passed to tasks
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: passed as private environment (never rendered)
Every task container also gets CONVEYOR_IMAGE, the image it runs (MLflow's `image` tag).

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

import docker.errors
from airflow.providers.docker.exceptions import (
    DockerContainerFailedException,
    DockerContainerFailedSkipException,
)
from airflow.providers.docker.operators.docker import DockerOperator, fetch_logs
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from docker.types import Mount

WORKSPACE = "/workspace"
GATEWAY_DIR = "/gateway"
EXIT_BAD_INPUT = 2
EXIT_QUARANTINED = 3
EXIT_DEPLOY_REJECTED = 4
FAIL_FAST_EXIT_CODES = frozenset({EXIT_BAD_INPUT, EXIT_DEPLOY_REJECTED})

PUBLIC_ENV = (
    "MLFLOW_TRACKING_URI",
    "DVC_REMOTE_URL",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "MODEL_NAME",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)
PRIVATE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

# Retries come quickly (5 s, 10 s, 20 s): a task that lost its worker resumes its container
# (see `_adoptable`), and a store that was restarting is usually back within seconds.
RETRY_ARGS = {
    "retries": 3,
    "retry_delay": timedelta(seconds=5),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=2),
}


class MissingSetting(RuntimeError):
    pass


def setting(name: str) -> str:
    """A deployment setting from the environment; absent or empty is an error naming it."""
    value = os.environ.get(name, "")
    if not value:
        raise MissingSetting(
            f"{name} is not set in the Airflow containers' environment (Compose sets it from the "
            f"stack's env file; .env.example has its default: run `make up`)"
        )
    return value


def workspace_mount() -> Mount:
    return Mount(target=WORKSPACE, source=setting("CONVEYOR_WORKSPACE_VOLUME"), type="volume")


def gateway_mount() -> Mount:
    return Mount(target=GATEWAY_DIR, source=setting("CONVEYOR_GATEWAY_VOLUME"), type="volume")


def project_mount(relative: str, target_root: str = "/opt/conveyor") -> Mount:
    """A file of the repository checkout, read-only, by its HOST path (the daemon resolves bind
    sources on the host: CONVEYOR_HOST_PROJECT_DIR, set by scripts/stack.sh)."""
    host_dir = setting("CONVEYOR_HOST_PROJECT_DIR").rstrip("/")
    return Mount(
        target=f"{target_root}/{relative}",
        source=f"{host_dir}/{relative}",
        type="bind",
        read_only=True,
    )


def _exit_code(exc: DockerContainerFailedException) -> int | None:
    match = re.search(r"'StatusCode': (\d+)", str(exc))
    return int(match.group(1)) if match else None


_REASON = re.compile(r"^[\w.]+: (error|failed|quarantined): ")


def _last_line(logs) -> str:
    """The command's one-line reason (`<stage>: error|failed|quarantined: ...`), else its last
    non-empty output line."""
    lines = [
        (x.decode(errors="replace") if isinstance(x, bytes) else str(x)).strip() for x in logs or []
    ]
    lines = [x for x in lines if x]
    reasons = [x for x in lines if _REASON.match(x)]
    return (reasons or lines or [""])[-1]


def _last_json(lines: list, task_id: str) -> dict:
    """The command's summary: the JSON object on its last output line that holds one.

    DockerOperator reads stdout and stderr as one stream, so a progress line's fragment on
    stderr can land in the same line as the summary on stdout (`deploy: ... 45.9 s{"changed"...`
    or the summary followed by the fragment): the object is looked for anywhere in the line.
    """
    decoder = json.JSONDecoder()
    for line in reversed([str(x).strip() for x in lines if x]):
        for start in (i for i, char in enumerate(line) if char == "{"):
            try:
                found, _ = decoder.raw_decode(line, start)
            except json.JSONDecodeError:
                continue
            if isinstance(found, dict):
                return found
    raise AirflowFailException(f"{task_id}: the command printed no JSON summary line")


class ConveyorDockerOperator(DockerOperator):
    """DockerOperator with Conveyor's defaults.

    - image: TRAIN_IMAGE (never `latest`, never pulled); `mount_tmp_dir=False` (Airflow runs in
      a container: its temp dir is no path the daemon can see); the workspace named volume;
    - labels per run (dag, task, run id, try); a container of an earlier try of the same task
      and run that still runs the same command (its worker died: a killed scheduler) or that
      finished it successfully is resumed instead of started again, any other is removed;
    - credentials read from the worker's environment at run time into `private_environment`;
    - exit codes 2 and 4 fail without retry; a skip shows the command's last line as reason;
    - `json_xcom=True`: the last output line that is a JSON object becomes the XCom (a dict).
    """

    def __init__(
        self,
        *,
        json_xcom: bool = False,
        extra_env: dict | None = None,
        mounts: list | None = None,
        network: str | None = None,
        **kwargs,
    ):
        env = {name: os.environ[name] for name in PUBLIC_ENV if os.environ.get(name)}
        env.update(extra_env or {})
        kwargs.setdefault("image", setting("TRAIN_IMAGE"))
        env["CONVEYOR_IMAGE"] = kwargs["image"]
        kwargs.setdefault("do_xcom_push", json_xcom)
        kwargs.setdefault("xcom_all", json_xcom)  # all lines: the JSON one is picked in execute
        for key, value in RETRY_ARGS.items():
            kwargs.setdefault(key, value)
        kwargs.setdefault("mem_limit", setting("CONVEYOR_TASK_MEMORY_LIMIT"))
        super().__init__(
            environment=env,
            mounts=mounts or [workspace_mount()],
            network_mode=network or setting("CONVEYOR_TASK_NETWORK"),
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

    def _adoptable(self, labels: dict[str, str]) -> dict | None:
        """The container of an earlier try of this task and run worth resuming, if any; every
        other container of this task and run is removed (no duplicate is ever left running).

        Worth resuming: same image and command, and still running (its worker died, e.g. a
        killed scheduler, while the work went on) or exited 0 (it finished before anyone read
        the result). A container that failed or was stopped is removed and the work starts over.
        """
        filters = {
            "label": [
                f"{k}={labels[k]}"
                for k in ("io.conveyor.dag_id", "io.conveyor.task_id", "io.conveyor.run_id")
            ]
        }
        command = self.format_command(self.command)
        adopted = None
        for found in self.cli.containers(all=True, filters=filters):
            info = self.cli.inspect_container(found["Id"])
            state, config = info["State"], info["Config"]
            same_work = config["Image"] == self.image and config["Cmd"] == command
            healthy = state["Running"] or (state["Status"] == "exited" and state["ExitCode"] == 0)
            if adopted is None and same_work and healthy:
                adopted = info
                continue
            self.log.warning(
                "Removing container %s of an earlier try (%s, exit %s)",
                found["Id"][:12],
                state["Status"],
                state["ExitCode"],
            )
            self.cli.remove_container(found["Id"], force=True)
        return adopted

    def _run_image_with_mounts(self, target_mounts, add_tmp_variable: bool):
        adopted = self._adoptable(self.labels)
        if adopted is None:
            return super()._run_image_with_mounts(target_mounts, add_tmp_variable)
        # Resuming is not something DockerOperator offers: follow the running container's whole
        # output (logs from its start, then live) and finish exactly as the parent does.
        self.log.warning(
            "Resuming container %s of try %s (%s) instead of starting again",
            adopted["Id"][:12],
            adopted["Config"]["Labels"].get("io.conveyor.try"),
            adopted["State"]["Status"],
        )
        self.container = {"Id": adopted["Id"]}
        try:
            log_stream = self.cli.logs(adopted["Id"], stream=True, follow=True)
            log_lines = fetch_logs(log_stream, self.log)
            code = self.cli.wait(adopted["Id"])["StatusCode"]
            if code in self.skip_on_exit_code:
                raise DockerContainerFailedSkipException(
                    f"Docker container returned exit code {code}. Skipping.", logs=log_lines
                )
            if code != 0:
                raise DockerContainerFailedException(
                    f"Docker container failed: {{'StatusCode': {code}}}", logs=log_lines
                )
            return log_lines if self.do_xcom_push else None
        finally:
            if self.auto_remove in ("success", "force"):
                self.cli.remove_container(adopted["Id"], force=self.auto_remove == "force")

    def execute(self, context):
        self.labels = self._run_labels(context)
        self._private_environment = {n: os.environ[n] for n in PRIVATE_ENV if os.environ.get(n)}
        try:
            result = super().execute(context)
        except DockerContainerFailedSkipException as exc:
            raise AirflowSkipException(f"{self.task_id}: {_last_line(exc.logs)}") from exc
        except DockerContainerFailedException as exc:
            code = _exit_code(exc)
            if self._out_of_memory():
                # The kernel's OOM killer gives no message of its own: say which limit was hit.
                raise AirflowFailException(
                    f"{self.task_id} failed: out of memory, killed at the container's limit "
                    f"{self.mem_limit} (CONVEYOR_TASK_MEMORY_LIMIT; not retried: it would fail "
                    f"again). Last output: {_last_line(exc.logs)}"
                ) from exc
            if code in FAIL_FAST_EXIT_CODES:
                raise AirflowFailException(
                    f"{self.task_id} failed (exit {code}, not retried): {_last_line(exc.logs)}"
                ) from exc
            raise
        if self.json_xcom:
            return _last_json(result if isinstance(result, list) else [result], self.task_id)
        return result

    def _out_of_memory(self) -> bool:
        if not self.container:
            return False
        try:
            return bool(self.cli.inspect_container(self.container["Id"])["State"]["OOMKilled"])
        except docker.errors.NotFound:
            return False


# CONVEYOR_EXECUTION (docker | kubernetes): kubernetes runs the same tasks as Kubernetes pods
# (dags/conveyor_kubernetes.py).
EXECUTION = setting("CONVEYOR_EXECUTION")
if EXECUTION == "kubernetes":
    from conveyor_kubernetes import ConveyorPodOperator as ConveyorDockerOperator  # noqa: F401
elif EXECUTION != "docker":
    raise ValueError(f"CONVEYOR_EXECUTION={EXECUTION!r}: docker or kubernetes")
