"""The DAG's tasks as Kubernetes pods (CONVEYOR_EXECUTION=kubernetes): KubernetesPodOperator with
the same images, commands and environment as ConveyorDockerOperator, so that dags/retrain.py
runs unchanged on a cluster. conveyor_operator.py picks this class when the setting says so.

How a Docker task maps onto a pod:
  command                  the same argv (JSON-summary tasks: wrapped so that the summary line
                           also lands in /airflow/xcom/return.json, KPO's XCom file)
  named volume V           PersistentVolumeClaim V (the workspace: CONVEYOR_WORKSPACE_VOLUME)
  bind-mounted repo file   a key of the ConfigMap KUBE_PROJECT_CONFIGMAP, read-only
  environment              the same variables; credentials (AWS_*) from the Secret
                           KUBE_TASK_SECRET (envFrom), never in the rendered pod
  exit codes               3 skips (validate), 2 and 4 fail without retry, like the Docker tasks

Settings (the Airflow containers' environment): KUBE_NAMESPACE, KUBE_TASK_SECRET,
KUBE_PROJECT_CONFIGMAP, KUBE_TASK_SERVICE_ACCOUNT, and CONVEYOR_TASK_MEMORY_LIMIT (Docker's
`2g`, a Kubernetes `2Gi` here) like the Docker tasks. A missing one fails the DAG's import
naming it.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from conveyor_operator import (
    FAIL_FAST_EXIT_CODES,
    PUBLIC_ENV,
    RETRY_ARGS,
    setting,
    workspace_mount,
)
from kubernetes.client import models as k8s

XCOM_FILE = "/airflow/xcom/return.json"
# The training and release images' user (pipelines/Dockerfile, release/Dockerfile).
TASK_UID = 1000


def quantity(docker_size: str) -> str:
    """Docker's memory size (512m, 2g) as a Kubernetes quantity (512Mi, 2Gi)."""
    number, unit = docker_size[:-1], docker_size[-1].lower()
    units = {"k": "Ki", "m": "Mi", "g": "Gi"}
    if unit not in units or not number.isdigit():
        raise ValueError(f"CONVEYOR_TASK_MEMORY_LIMIT={docker_size!r}: a number and k, m or g")
    return f"{number}{units[unit]}"


def with_xcom_file(command: list[str]) -> list[str]:
    """Run `command` unchanged; its last JSON-object line also goes to KPO's XCom file."""
    script = (
        f"set -o pipefail; mkdir -p {PurePosixPath(XCOM_FILE).parent}; "
        f'"$@" | tee /dev/stderr | grep "^{{" | tail -n 1 > {XCOM_FILE}'
    )
    return ["bash", "-c", script, "conveyor", *command]


def pod_volumes(mounts: list, configmap: str) -> tuple[list, list]:
    """Docker mounts as pod volumes: named volume -> PVC of that name, bind -> ConfigMap key."""
    volumes, volume_mounts = [], []
    for i, mount in enumerate(mounts):
        name = f"mount-{i}"
        if mount["Type"] == "volume":
            volumes.append(
                k8s.V1Volume(
                    name=name,
                    persistent_volume_claim=(
                        k8s.V1PersistentVolumeClaimVolumeSource(claim_name=mount["Source"])
                    ),
                )
            )
            volume_mounts.append(
                k8s.V1VolumeMount(
                    name=name, mount_path=mount["Target"], read_only=bool(mount.get("ReadOnly"))
                )
            )
        else:
            key = PurePosixPath(mount["Source"]).name
            volumes.append(
                k8s.V1Volume(
                    name=name,
                    config_map=k8s.V1ConfigMapVolumeSource(
                        name=configmap, items=[k8s.V1KeyToPath(key=key, path=key)]
                    ),
                )
            )
            volume_mounts.append(
                k8s.V1VolumeMount(
                    name=name, mount_path=mount["Target"], sub_path=key, read_only=True
                )
            )
    return volumes, volume_mounts


class ConveyorPodOperator(KubernetesPodOperator):
    """ConveyorDockerOperator's interface (command, mounts, extra_env, json_xcom, network,
    skip_on_exit_code) on KubernetesPodOperator."""

    def __init__(
        self,
        *,
        command: list[str],
        json_xcom: bool = False,
        extra_env: dict | None = None,
        mounts: list | None = None,
        network: str | None = None,
        image: str | None = None,
        **kwargs,
    ):
        del network  # pods share the cluster's network; services are reached by their names
        image = image or setting("TRAIN_IMAGE")
        env = {name: os.environ[name] for name in PUBLIC_ENV if os.environ.get(name)}
        env.update(extra_env or {})
        env["CONVEYOR_IMAGE"] = image
        volumes, volume_mounts = pod_volumes(
            mounts or [workspace_mount()], setting("KUBE_PROJECT_CONFIGMAP")
        )
        for key, value in RETRY_ARGS.items():
            kwargs.setdefault(key, value)
        super().__init__(
            image=image,
            cmds=[],
            arguments=with_xcom_file(command) if json_xcom else list(command),
            env_vars=env,
            env_from=[
                k8s.V1EnvFromSource(
                    secret_ref=k8s.V1SecretEnvSource(name=setting("KUBE_TASK_SECRET"))
                )
            ],
            namespace=setting("KUBE_NAMESPACE"),
            service_account_name=setting("KUBE_TASK_SERVICE_ACCOUNT"),
            volumes=volumes,
            volume_mounts=volume_mounts,
            labels={"app.kubernetes.io/part-of": "conveyor", "app.kubernetes.io/component": "task"},
            image_pull_policy="IfNotPresent",
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=TASK_UID,
                run_as_group=TASK_UID,
                fs_group=TASK_UID,
                seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
            ),
            container_security_context=k8s.V1SecurityContext(
                allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
            ),
            container_resources=k8s.V1ResourceRequirements(
                requests={"cpu": "500m", "memory": "1Gi"},
                limits={"memory": quantity(setting("CONVEYOR_TASK_MEMORY_LIMIT"))},
            ),
            do_xcom_push=json_xcom,
            # The command's one-line reason (`<stage>: failed: ...`) becomes the pod's message.
            termination_message_policy="FallbackToLogsOnError",
            on_finish_action="delete_succeeded_pod",
            get_logs=True,
            **kwargs,
        )

    def cleanup(self, pod, remote_pod, xcom_result=None, context=None):
        """Exit codes 2 (bad input) and 4 (release rejected) fail without retry."""
        try:
            super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
        except AirflowException as exc:
            code = exit_code(remote_pod, self.base_container_name)
            if code in FAIL_FAST_EXIT_CODES:
                raise AirflowFailException(
                    f"{self.task_id} failed (exit {code}, not retried): {exc}"
                ) from exc
            raise


def exit_code(pod, container: str) -> int | None:
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    for status in statuses:
        if status.name == container and status.state and status.state.terminated:
            return status.state.terminated.exit_code
    return None
