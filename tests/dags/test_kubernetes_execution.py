"""CONVEYOR_EXECUTION=kubernetes: the `retrain` DAG's tasks as KubernetesPodOperator pods.

No cluster runs here: each task's pod is rendered (templates filled from a run's context, the
pod built by the provider itself) and validated against the Kubernetes API schemas of the
version the manifests target (release.manifests.KUBERNETES_VERSION, strict). Needs the
`airflow` group with providers-cncf-kubernetes: `make test-dags`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

pytest.importorskip(
    "airflow.providers.cncf.kubernetes",
    reason="providers-cncf-kubernetes is not installed here: run `make test-dags`",
)

from airflow.dag_processing.dagbag import BundleDagBag  # noqa: E402
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator  # noqa: E402
from kubernetes.client import ApiClient  # noqa: E402
from kubernetes.client import models as k8s  # noqa: E402

from release.manifests import validate  # noqa: E402
from tests.dags.test_retrain_dag import SETTINGS  # noqa: E402

DAGS = Path(__file__).resolve().parents[2] / "dags"
# What Compose gives the Airflow containers (.env.example, as the DAG integrity tests read it)
# with registry images, credentials that must never be rendered, and the kubernetes settings.
ENV = {
    **SETTINGS,
    "TRAIN_IMAGE": "registry.example.test/conveyor/train:0123456789ab",
    "RELEASE_IMAGE": "registry.example.test/conveyor/release:0123456789ab",
    "SERVING_IMAGE": "registry.example.test/conveyor/serving:0123456789ab",
    "SERVING_SKLEARN_IMAGE": "registry.example.test/conveyor/serving-sklearn:0123456789ab",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "AWS_ACCESS_KEY_ID": "key-id-not-for-the-pod-spec",
    "AWS_SECRET_ACCESS_KEY": "secret-not-for-the-pod-spec",
    "DEPLOY_TARGET": "kubernetes",
    "KUBE_NAMESPACE": "conveyor-tasks",
    "KUBE_TASK_SECRET": "conveyor-task-credentials",
    "KUBE_PROJECT_CONFIGMAP": "conveyor-project",
    "KUBE_TASK_SERVICE_ACCOUNT": "conveyor-tasks",
    "CONVEYOR_TASK_MEMORY_LIMIT": "2g",
}
PARAMS = {
    "source": "",
    "train": {},
    "min_improvement": None,
    "deploy_image": "",
    "ready_timeout": 90,
    "force_deploy": False,
}


def _dag(monkeypatch, tmp_path, execution: str):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    for name, value in {**ENV, "CONVEYOR_EXECUTION": execution}.items():
        monkeypatch.setenv(name, value)
    for module in ("conveyor_operator", "conveyor_kubernetes"):
        sys.modules.pop(module, None)
    bag = BundleDagBag(str(DAGS), bundle_path=DAGS)
    assert bag.import_errors == {}
    return bag.dags["retrain"]


@pytest.fixture
def kube_dag(monkeypatch, tmp_path):
    return _dag(monkeypatch, tmp_path, "kubernetes")


@pytest.fixture
def kube_module(kube_dag):
    return sys.modules["conveyor_kubernetes"]


class RunTI:
    """The task instance a template sees: identifiers and the upstream XComs of a run."""

    dag_id, run_id, try_number, map_index = "retrain", "manual__2026-01-02", 1, -1

    def __init__(self, task_id: str):
        self.task_id = task_id

    def xcom_pull(self, task_ids=None, **_):
        if task_ids == "resolve_trigger":  # the run's date and source
            return {"date": "2026-01-02", "source": ""}
        return {"image": "conveyor/serving-model:conveyor-v3"}


def _pod(op) -> dict:
    ti = RunTI(op.task_id)
    context = {
        "ds": "2026-01-02",
        "params": PARAMS,
        "run_id": ti.run_id,
        "ti": ti,
        "task_instance": ti,
        "dag": op.dag,
        "task": op,
        "logical_date": None,
        "dag_run": None,
    }
    op.render_template_fields(context)
    return ApiClient().sanitize_for_serialization(op.build_pod_request_obj(context, dry_run=True))


def test_every_docker_task_is_a_pod_with_the_same_command(monkeypatch, tmp_path):
    docker_dag = _dag(monkeypatch, tmp_path, "docker")
    docker_commands = {
        t.task_id: (t.image, list(t.command)) for t in docker_dag.tasks if hasattr(t, "command")
    }
    kube = _dag(monkeypatch, tmp_path, "kubernetes")
    pods = {t.task_id: t for t in kube.tasks if isinstance(t, KubernetesPodOperator)}
    assert set(pods) == set(docker_commands)
    assert {t.task_id: set(t.downstream_task_ids) for t in kube.tasks} == {
        t.task_id: set(t.downstream_task_ids) for t in docker_dag.tasks
    }
    for task_id, (image, command) in docker_commands.items():
        pod = pods[task_id]
        assert pod.image == image, task_id
        args = pod.arguments
        assert args == command or args[-len(command) :] == command, task_id
        assert pod.do_xcom_push == (args != command), task_id
    assert 3 in pods["validate"].skip_on_exit_code


def test_each_tasks_pod_renders_to_a_valid_hardened_pod(kube_dag):
    pods = [t for t in kube_dag.tasks if isinstance(t, KubernetesPodOperator)]
    assert len(pods) == 9
    for op in pods:
        pod = _pod(op)
        validate([pod])
        spec = pod["spec"]
        assert pod["metadata"]["namespace"] == "conveyor-tasks", op.task_id
        assert spec["serviceAccountName"] == "conveyor-tasks"
        assert spec["securityContext"]["runAsNonRoot"] is True
        (base,) = [c for c in spec["containers"] if c["name"] == "base"]
        assert base["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert base["envFrom"] == [{"secretRef": {"name": "conveyor-task-credentials"}}]
        assert base["resources"]["limits"] == {"memory": "2Gi"}
        rendered = json.dumps(pod)
        assert "secret-not-for-the-pod-spec" not in rendered, op.task_id
        assert "key-id-not-for-the-pod-spec" not in rendered, op.task_id
        mounts = {m["mountPath"]: m["name"] for m in base["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        workspace = volumes[mounts["/workspace"]]
        assert workspace["persistentVolumeClaim"]["claimName"] == "conveyor-workspace"
        assert "{{" not in json.dumps(base["args"]), op.task_id  # every template was filled


def test_deploy_and_build_pods_carry_their_wiring(kube_dag):
    deploy = _pod(kube_dag.get_task("deploy"))
    (base,) = [c for c in deploy["spec"]["containers"] if c["name"] == "base"]
    assert base["image"] == ENV["RELEASE_IMAGE"]
    env = {e["name"]: e.get("value") for e in base["env"]}
    assert env["DEPLOY_TARGET"] == "kubernetes" and env["KUBE_NAMESPACE"] == "conveyor-tasks"
    assert "conveyor/serving-model:conveyor-v3" in base["args"][-1] or (
        "conveyor/serving-model:conveyor-v3" in base["args"]
    )
    build = _pod(kube_dag.get_task("build_serving_image"))
    (base,) = [c for c in build["spec"]["containers"] if c["name"] == "base"]
    assert base["image"] == ENV["RELEASE_IMAGE"]
    volumes = {v["name"]: v for v in build["spec"]["volumes"]}
    dockerfile = next(
        m
        for m in base["volumeMounts"]
        if m["mountPath"] == "/opt/conveyor/serving/model.Dockerfile"
    )
    assert dockerfile["readOnly"] is True and dockerfile["subPath"] == "model.Dockerfile"
    assert volumes[dockerfile["name"]]["configMap"]["name"] == "conveyor-project"


@pytest.mark.parametrize("code", [0, 4])
def test_the_xcom_wrapper_keeps_the_command_and_its_exit_code(
    kube_module, monkeypatch, tmp_path, code
):
    monkeypatch.setattr(kube_module, "XCOM_FILE", str(tmp_path / "xcom" / "return.json"))
    command = [
        sys.executable,
        "-c",
        f"print('log line'); print('{{\"changed\": true}}'); print('tail'); exit({code})",
    ]
    proc = subprocess.run(
        kube_module.with_xcom_file(command), capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == code
    assert "log line" in proc.stderr and "tail" in proc.stderr
    assert json.loads((tmp_path / "xcom" / "return.json").read_text()) == {"changed": True}


def test_a_missing_kubernetes_setting_fails_the_import_naming_it(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    for name, value in {**ENV, "CONVEYOR_EXECUTION": "kubernetes"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KUBE_TASK_SECRET")
    for module in ("conveyor_operator", "conveyor_kubernetes"):
        sys.modules.pop(module, None)
    bag = BundleDagBag(str(DAGS), bundle_path=DAGS)
    errors = list(bag.import_errors.values())  # every DAG file on conveyor_operator fails
    assert errors and all("KUBE_TASK_SECRET is not set" in e for e in errors), errors


def test_memory_sizes_become_quantities(kube_module):
    assert kube_module.quantity("2g") == "2Gi" and kube_module.quantity("512m") == "512Mi"
    with pytest.raises(ValueError, match="CONVEYOR_TASK_MEMORY_LIMIT='2 GB'"):
        kube_module.quantity("2 GB")


def test_exit_codes_are_read_from_the_pod(kube_module):
    def pod(code):
        terminated = k8s.V1ContainerStateTerminated(exit_code=code)
        status = k8s.V1ContainerStatus(
            name="base",
            image="x",
            image_id="",
            ready=False,
            restart_count=0,
            state=k8s.V1ContainerState(terminated=terminated),
        )
        return k8s.V1Pod(status=k8s.V1PodStatus(container_statuses=[status]))

    assert kube_module.exit_code(pod(4), "base") == 4
    assert kube_module.exit_code(pod(2), "other") is None
    assert kube_module.exit_code(k8s.V1Pod(), "base") is None


def test_an_unknown_execution_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("CONVEYOR_EXECUTION", "nomad")
    for module in ("conveyor_operator", "conveyor_kubernetes"):
        sys.modules.pop(module, None)
    bag = BundleDagBag(str(DAGS), bundle_path=DAGS)
    errors = list(bag.import_errors.values())
    assert errors and all("CONVEYOR_EXECUTION='nomad': docker or kubernetes" in e for e in errors)
