"""`kubernetes` target: a rolling update of the serving Deployment (release/kubernetes), by kubectl.

1. read the Deployment KUBE_DEPLOYMENT in KUBE_NAMESPACE (the cluster of KUBECONFIG): a cluster
   that cannot be reached or a missing Deployment fails before anything is pushed;
2. push the baked image from the build engine (DOCKER_HOST) to KUBE_REGISTRY, pinned by digest;
3. `kubectl set image`, then `kubectl rollout status` within the release's ready timeout: the
   Deployment's own strategy (maxSurge 1, maxUnavailable 0, readiness on /ready) rolls it out;
4. a rollout that does not complete is undone (`kubectl rollout undo`) and the release fails
   with kubectl's reason.

Not run against a cluster here (none can run on this machine): the manifests are rendered and
validated in tests, this module's failure path runs against an unreachable API server.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from release.build import LABEL_MODEL_VERSION
from release.manifests import in_registry, kubectl
from release.settings import KubernetesSettings
from release.target import DeployError, Release, engine
from release.targets.swarm import push

Settings = KubernetesSettings
CONTAINER = "serving"  # the container's name in release/kubernetes/base/deployment.yaml


def run_kubectl(settings: KubernetesSettings, *args: str, timeout: float = 60) -> str:
    cmd = [kubectl(), "--namespace", settings.KUBE_NAMESPACE, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        raise DeployError(f"kubectl {' '.join(args)}: no answer in {timeout + 30:.0f} s") from None
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]  # kubectl's summary
        raise DeployError(f"kubectl {' '.join(args)}: {reason[-500:]}")
    return proc.stdout.strip()


def deploy(release: Release, settings: KubernetesSettings) -> dict[str, Any]:
    """The target's entry point (release/deploy.py)."""
    deployment = f"deployment/{settings.KUBE_DEPLOYMENT}"
    live = run_kubectl(
        settings,
        "get",
        deployment,
        "--request-timeout=20s",
        "-o",
        f"jsonpath={{.spec.template.spec.containers[?(@.name=='{CONTAINER}')].image}}",
    )
    build = engine(settings.DOCKER_HOST, "Docker (build engine)")
    try:
        repository, tag, _ = in_registry(settings.KUBE_REGISTRY, release.image)
        digest = push(build, release.image, settings.KUBE_REGISTRY)
        labels = build.images.get(release.image).labels or {}
    finally:
        build.close()
    image = f"{repository}:{tag}@{digest}"
    summary = {
        "target": "kubernetes",
        "image": release.image,
        "deployment": deployment,
        "registry_image": image,
        "model_version": labels.get(LABEL_MODEL_VERSION, ""),
    }
    if live == image:
        print(f"deploy: {image} is already live in {deployment}: nothing to do", file=sys.stderr)
        return {**summary, "changed": False}
    run_kubectl(settings, "set", "image", deployment, f"{CONTAINER}={image}")
    try:
        run_kubectl(
            settings,
            "rollout",
            "status",
            deployment,
            f"--timeout={release.ready_timeout:.0f}s",
            timeout=release.ready_timeout,
        )
    except DeployError as exc:
        run_kubectl(settings, "rollout", "undo", deployment)
        raise DeployError(f"{exc}; rolled back to {live}, which keeps serving") from None
    return {**summary, "previous": live, "changed": True}
