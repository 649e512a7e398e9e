"""Kubernetes and Cloud Run manifests, rendered by the real kubectl (kustomize) from the release
settings and validated: Kubernetes against the API schemas of manifests.KUBERNETES_VERSION
(strict), Cloud Run against the fields its Knative Service YAML requires. No cluster runs here:
what is checked is what the engines would be given."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import pytest
import yaml

from pipelines.common import PipelineError
from release import manifests
from release import settings as rs

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"conveyor/serving-model:conveyor-v7@{DIGEST}"
KUBE = {
    "KUBE_NAMESPACE": "conveyor-ml",
    "KUBE_DEPLOYMENT": "conveyor-serving",
    "KUBE_REGISTRY": "registry.example.test/team",
    "DOCKER_HOST": "tcp://proxy:2375",
    "SERVING_REPLICAS": "3",
    "SERVING_MAX_REPLICAS": "9",
    "SERVING_CPUS": "1.5",
    "SERVING_MEMORY_MB": "1536",
}
CLOUDRUN = {
    "CLOUDRUN_SERVICE": "conveyor-serving",
    "CLOUDRUN_REGION": "europe-west1",
    "CLOUDRUN_REGISTRY": "europe-west1-docker.pkg.dev/proj/conveyor",
    "CLOUDRUN_SERVICE_ACCOUNT": "serving@proj.iam.gserviceaccount.com",
    "SERVING_CONCURRENCY": "40",
    "SERVING_REPLICAS": "1",
    "SERVING_MAX_REPLICAS": "5",
    "SERVING_CPUS": "2",
    "SERVING_MEMORY_MB": "2048",
    "CLOUDRUN_SECRETS": json.dumps({"MLFLOW_TRACKING_TOKEN": "mlflow-token:4"}),
}


def _settings(monkeypatch, cls, values: dict[str, str], **overrides: str):
    for name, value in {**values, **overrides}.items():
        monkeypatch.setenv(name, value)
    return rs.load(cls)


def _by_kind(docs):
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("overlay", manifests.OVERLAYS)
def test_each_overlay_renders_valid_hardened_serving(monkeypatch, overlay):
    settings = _settings(monkeypatch, rs.KubernetesSettings, KUBE)
    docs = _by_kind(manifests.render_kubernetes(overlay, settings, IMAGE))
    assert set(docs) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    assert {d["metadata"]["namespace"] for d in docs.values()} == {"conveyor-ml"}
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy == {"maxSurge": 1, "maxUnavailable": 0}
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == (
        f"registry.example.test/team/conveyor/serving-model:conveyor-v7@{DIGEST}"
    )
    assert container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"] == {
        "requests": {"cpu": "1500m", "memory": "1536Mi"},
        "limits": {"cpu": "1500m", "memory": "1536Mi"},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True and hardening["runAsNonRoot"] is True
    assert hardening["capabilities"] == {"drop": ["ALL"]}
    assert hardening["allowPrivilegeEscalation"] is False
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert docs["Service"]["spec"]["selector"] == selector
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 9)
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_the_settings_shape_the_manifests(monkeypatch):
    settings = _settings(
        monkeypatch,
        rs.KubernetesSettings,
        KUBE,
        SERVING_REPLICAS="5",
        SERVING_MAX_REPLICAS="5",
        SERVING_MEMORY_MB="512",
        SERVING_CPUS="0.25",
        KUBE_NAMESPACE="elsewhere",
    )
    docs = _by_kind(manifests.render_kubernetes("staging", settings, "conveyor/serving-model:m-v1"))
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "250m", "memory": "512Mi"}
    assert container["image"] == "registry.example.test/team/conveyor/serving-model:m-v1"
    assert docs["Deployment"]["spec"]["replicas"] == 5
    assert docs["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 5
    assert docs["Service"]["metadata"]["namespace"] == "elsewhere"


def test_validation_rejects_what_the_api_server_would(monkeypatch):
    settings = _settings(monkeypatch, rs.KubernetesSettings, KUBE)
    docs = manifests.render_kubernetes("production", settings, IMAGE)
    manifests.validate(docs)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(PipelineError, match="Deployment conveyor-serving: .*readinesProbe"):
        manifests.validate([typo])
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "three"
    with pytest.raises(PipelineError, match="spec/replicas"):
        manifests.validate([wrong_type])


def test_bad_settings_are_named(monkeypatch):
    settings = _settings(monkeypatch, rs.KubernetesSettings, KUBE, SERVING_MAX_REPLICAS="2")
    with pytest.raises(PipelineError, match="SERVING_MAX_REPLICAS must be >= SERVING_REPLICAS"):
        manifests.render_kubernetes("production", settings, IMAGE)
    settings = _settings(monkeypatch, rs.KubernetesSettings, KUBE)
    with pytest.raises(PipelineError, match="has no tag"):
        manifests.render_kubernetes("production", settings, "conveyor/serving-model")
    monkeypatch.delenv("KUBE_NAMESPACE")
    with pytest.raises(rs.SettingsError, match="^kubernetes settings: KUBE_NAMESPACE is not set$"):
        rs.load(rs.KubernetesSettings)


# Cloud Run's service YAML (serving.knative.dev/v1 as `gcloud run services replace` reads it):
# the fields it requires and the values it accepts.
CLOUDRUN_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
CLOUDRUN_CPUS = {"1", "2", "4", "6", "8"}
CLOUDRUN_MIN_MEMORY_MIB = {"1": 128, "2": 128, "4": 2048, "6": 4096, "8": 4096}
CLOUDRUN_MAX_MEMORY_MIB = {"1": 4096, "2": 8192, "4": 16384, "6": 24576, "8": 32768}


def cloudrun_problems(doc: dict) -> list[str]:
    problems = []
    if doc.get("apiVersion") != "serving.knative.dev/v1" or doc.get("kind") != "Service":
        problems.append("apiVersion/kind must be serving.knative.dev/v1 Service")
    if not CLOUDRUN_NAME.match(doc.get("metadata", {}).get("name", "")):
        problems.append("metadata.name: lowercase letters, digits, hyphens, <= 49 chars")
    template = doc.get("spec", {}).get("template", {})
    annotations = template.get("metadata", {}).get("annotations", {})
    low = annotations.get("autoscaling.knative.dev/minScale", "0")
    high = annotations.get("autoscaling.knative.dev/maxScale", "100")
    if not (low.isdigit() and high.isdigit() and int(low) <= int(high)):
        problems.append("min/maxScale: integers, min <= max")
    spec = template.get("spec", {})
    if not 1 <= spec.get("containerConcurrency", 80) <= 1000:
        problems.append("containerConcurrency: 1..1000")
    if not 1 <= spec.get("timeoutSeconds", 300) <= 3600:
        problems.append("timeoutSeconds: 1..3600")
    containers = spec.get("containers", [])
    if len(containers) != 1:
        return [*problems, "exactly one (ingress) container"]
    (container,) = containers
    if not container.get("image"):
        problems.append("container image is required")
    ports = container.get("ports", [])
    if (
        len(ports) != 1
        or ports[0].get("name") not in ("http1", "h2c")
        or not isinstance(ports[0].get("containerPort"), int)
    ):
        problems.append("one port named http1 or h2c with an integer containerPort")
    limits = container.get("resources", {}).get("limits", {})
    cpu, memory = limits.get("cpu", ""), limits.get("memory", "")
    mib = (
        int(memory[:-2]) * (1024 if memory.endswith("Gi") else 1)
        if memory[-2:] in ("Mi", "Gi")
        else 0
    )
    if cpu in CLOUDRUN_CPUS:
        if not CLOUDRUN_MIN_MEMORY_MIB[cpu] <= mib <= CLOUDRUN_MAX_MEMORY_MIB[cpu]:
            problems.append(f"memory {memory} outside Cloud Run's range for {cpu} CPU")
    elif not (cpu.endswith("m") and 80 <= int(cpu[:-1]) < 1000 and mib <= 1024):
        problems.append(f"cpu {cpu!r}: 1, 2, 4, 6, 8 or a fraction below 1 with <= 1 GiB")
    for kind in ("startupProbe", "livenessProbe"):
        probe = container.get(kind, {})
        handlers = [k for k in ("httpGet", "tcpSocket", "grpc") if k in probe]
        if len(handlers) != 1:
            problems.append(f"{kind}: exactly one of httpGet, tcpSocket, grpc")
        if probe.get("timeoutSeconds", 1) > probe.get("periodSeconds", 10):
            problems.append(f"{kind}: timeoutSeconds <= periodSeconds")
    if "readinessProbe" in container or "securityContext" in container:
        problems.append("readinessProbe / securityContext are not Cloud Run service fields")
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if "valueFrom" in env and not (ref and ref.get("name") and ref.get("key")):
            problems.append(f"env {env.get('name')}: valueFrom.secretKeyRef needs name and key")
    return problems


def test_cloudrun_service_has_what_cloud_run_requires(monkeypatch):
    settings = _settings(monkeypatch, rs.CloudRunSettings, CLOUDRUN)
    doc = manifests.render_cloudrun(settings, IMAGE)
    assert cloudrun_problems(doc) == []
    template = doc["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert container["image"] == (
        f"europe-west1-docker.pkg.dev/proj/conveyor/conveyor/serving-model:conveyor-v7@{DIGEST}"
    )
    assert container["ports"] == [{"name": "http1", "containerPort": 8000}]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "2048Mi"}
    assert container["startupProbe"]["httpGet"] == {"path": "/ready", "port": 8000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert container["env"] == [
        {
            "name": "MLFLOW_TRACKING_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "mlflow-token", "key": "4"}},
        }
    ]
    assert template["spec"]["containerConcurrency"] == 40
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/minScale"] == "1"
    assert annotations["autoscaling.knative.dev/maxScale"] == "5"


@pytest.mark.parametrize(
    ("cpus", "memory", "expected_cpu"),
    [("0.5", "512", "500m"), ("1", "512", "1"), ("3", "4096", "4")],
)
def test_cloudrun_sizes_map_onto_its_steps(monkeypatch, cpus, memory, expected_cpu):
    settings = _settings(
        monkeypatch,
        rs.CloudRunSettings,
        CLOUDRUN,
        SERVING_CPUS=cpus,
        SERVING_MEMORY_MB=memory,
        CLOUDRUN_SECRETS="{}",
    )
    doc = manifests.render_cloudrun(settings, IMAGE)
    assert cloudrun_problems(doc) == []
    assert doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == (
        expected_cpu
    )
    assert "env" not in doc["spec"]["template"]["spec"]["containers"][0]


def test_the_checker_catches_a_service_cloud_run_would_refuse(monkeypatch):
    doc = manifests.render_cloudrun(_settings(monkeypatch, rs.CloudRunSettings, CLOUDRUN), IMAGE)
    broken = copy.deepcopy(doc)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["ports"][0]["name"] = "http"
    container["resources"]["limits"] = {"cpu": "4", "memory": "512Mi"}
    broken["metadata"]["name"] = "Conveyor_Serving"
    assert len(cloudrun_problems(broken)) == 3


def test_bad_cloudrun_settings_are_named(monkeypatch):
    monkeypatch.setenv("CLOUDRUN_SERVICE", "Not_A_Name")
    for name, value in CLOUDRUN.items():
        if name != "CLOUDRUN_SERVICE":
            monkeypatch.setenv(name, value)
    with pytest.raises(rs.SettingsError, match="^cloudrun settings: CLOUDRUN_SERVICE='Not_A_Name'"):
        rs.load(rs.CloudRunSettings)
    settings = _settings(monkeypatch, rs.CloudRunSettings, CLOUDRUN, SERVING_CPUS="16")
    with pytest.raises(PipelineError, match="SERVING_CPUS=16.0: Cloud Run allows at most 8"):
        manifests.render_cloudrun(settings, IMAGE)


def test_cli_prints_yaml_documents(tmp_path):
    env = {**KUBE, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "release.manifests",
            "kubernetes",
            "--image",
            IMAGE,
            "--overlay",
            "staging",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert {d["kind"] for d in yaml.safe_load_all(proc.stdout)} >= {"Deployment", "Service"}
    proc = subprocess.run(
        [sys.executable, "-m", "release.manifests", "cloudrun", "--image", IMAGE],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("manifests: cloudrun settings: CLOUDRUN_SERVICE is not set")
