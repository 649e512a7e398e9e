"""Release settings: deployment wiring read once from the environment (pydantic-settings).

`DEPLOY_TARGET` picks the deploy target (compose | swarm | kubernetes); each target's settings
class names the variables that target needs, and so do the manifest renderers (Kubernetes,
Cloud Run). Nothing but the optional Cloud Run secrets has a default here: stack names
(network, container, service, registry host, namespace) and sizes alike come from the
environment (.env), and a missing or bad one fails with one line naming every such variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.common import PipelineError


class SettingsError(PipelineError):
    """A release setting is missing or invalid (exit code 2: a retry cannot help)."""


class _FromEnvironment(BaseSettings):
    # An empty value is a missing one (Compose passes `VAR=` for an unset `${VAR:-}`).
    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", frozen=True, env_ignore_empty=True
    )
    what: ClassVar[str] = "release"


class TargetChoice(_FromEnvironment):
    DEPLOY_TARGET: Literal["compose", "swarm", "kubernetes"]


class Sizing(_FromEnvironment):
    """One serving replica's size; Docker, Swarm, Kubernetes and Cloud Run each get it in
    their own units."""

    SERVING_MEMORY_MB: int = Field(ge=64)
    SERVING_CPUS: float = Field(gt=0)


class Scaling(Sizing):
    """How many replicas: the count to run (the autoscalers' minimum) and their maximum."""

    SERVING_REPLICAS: int = Field(ge=1)
    SERVING_MAX_REPLICAS: int = Field(ge=1)


class ComposeSettings(Sizing):
    """`compose`: one serving container behind the nginx gateway on one engine."""

    what: ClassVar[str] = "DEPLOY_TARGET=compose"
    DOCKER_HOST: str
    SERVING_NETWORK: str
    GATEWAY_CONTAINER: str
    GATEWAY_UPSTREAM_FILE: Path
    # Serving containers are named <prefix>-<image tag>-<image id>.
    SERVING_CONTAINER_PREFIX: str


class SwarmSettings(Sizing):
    """`swarm`: a replicated service; the image goes through the swarm's registry."""

    what: ClassVar[str] = "DEPLOY_TARGET=swarm"
    # The engine that holds the baked image (the build engine, through its socket proxy).
    DOCKER_HOST: str
    # The swarm manager's API (its own socket proxy: services, tasks and nodes only).
    SWARM_DOCKER_HOST: str
    SWARM_SERVICE: str
    # The registry as the build engine pushes to it, and as the swarm's nodes pull from it.
    SWARM_REGISTRY_PUSH: str
    SWARM_REGISTRY: str


class KubernetesSettings(Scaling):
    """`kubernetes`: the serving Deployment of release/kubernetes, rendered and rolled."""

    what: ClassVar[str] = "kubernetes"
    KUBE_NAMESPACE: str
    KUBE_DEPLOYMENT: str
    # The registry the cluster pulls from, as the build engine pushes to it.
    KUBE_REGISTRY: str
    DOCKER_HOST: str


class CloudRunSettings(Scaling):
    """Cloud Run: the Knative Service `gcloud run services replace` takes."""

    what: ClassVar[str] = "cloudrun"
    CLOUDRUN_SERVICE: str = Field(pattern=r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
    CLOUDRUN_REGION: str
    # Artifact Registry repository the image is pushed to: REGION-docker.pkg.dev/PROJECT/REPO
    CLOUDRUN_REGISTRY: str
    CLOUDRUN_SERVICE_ACCOUNT: str
    # Requests one instance serves at once.
    SERVING_CONCURRENCY: int = Field(ge=1, le=1000)
    # Environment from Secret Manager, a JSON object: {"ENV_NAME": "secret-name:version"}.
    # The baked image needs none: optional.
    CLOUDRUN_SECRETS: dict[str, str] = Field(default_factory=dict)


S = TypeVar("S", bound=_FromEnvironment)


def load(cls: type[S]) -> S:
    """`cls` from the environment, or one SettingsError line naming every bad variable."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            if err["type"] == "missing":
                problems.append(f"{name} is not set")
            else:
                problems.append(f"{name}={err.get('input')!r}: {err['msg']}")
        raise SettingsError(f"{cls.what} settings: {'; '.join(problems)}") from None


def deploy_target() -> str:
    return load(TargetChoice).DEPLOY_TARGET
