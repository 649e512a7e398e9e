"""Release settings: deployment wiring read once from the environment (pydantic-settings).

`DEPLOY_TARGET` picks the target (compose | swarm | kubernetes); each target's settings class
adds the variables that target needs. Stack names (network, container, service, registry host,
namespace) have no defaults: a missing one fails with a line naming the variable. Sizing knobs
(memory, CPUs, replicas, probe timings) have their one default here, shared by every target and
by the manifests rendered from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.common import PipelineError

Target = Literal["compose", "swarm", "kubernetes"]


class SettingsError(PipelineError):
    """A release setting is missing or invalid (exit code 2: a retry cannot help)."""


class ReleaseSettings(BaseSettings):
    """What every target shares: the target itself and how big one serving replica is."""

    # An empty value is a missing one (Compose passes `VAR=` for an unset `${VAR:-}`).
    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", frozen=True, env_ignore_empty=True
    )

    DEPLOY_TARGET: Target
    # One replica's size; Docker, Swarm, Kubernetes and Cloud Run each get it in their units.
    SERVING_MEMORY_MB: int = Field(1024, ge=64)
    SERVING_CPUS: float = Field(1.0, gt=0)


class ComposeSettings(ReleaseSettings):
    """`compose`: one serving container behind the nginx gateway on one engine."""

    DOCKER_HOST: str
    SERVING_NETWORK: str
    GATEWAY_CONTAINER: str
    GATEWAY_UPSTREAM_FILE: Path


class SwarmSettings(ReleaseSettings):
    """`swarm`: a replicated service; the image goes through the swarm's registry."""

    # The engine that holds the baked image (the build engine, through its socket proxy).
    DOCKER_HOST: str
    # The swarm manager's API (its own socket proxy: services, tasks and nodes only).
    SWARM_DOCKER_HOST: str
    SWARM_SERVICE: str
    # The registry as the build engine pushes to it, and as the swarm's nodes pull from it.
    SWARM_REGISTRY_PUSH: str
    SWARM_REGISTRY: str


class KubernetesSettings(ReleaseSettings):
    """`kubernetes`: the serving Deployment of release/kubernetes, rolled by kubectl."""

    KUBE_NAMESPACE: str
    KUBE_DEPLOYMENT: str
    # The registry the cluster pulls from (the baked image is pushed there first).
    KUBE_REGISTRY: str
    DOCKER_HOST: str


S = TypeVar("S", bound=ReleaseSettings)


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
        target = os.environ.get("DEPLOY_TARGET", "")
        what = f"DEPLOY_TARGET={target}" if cls is not ReleaseSettings else "release"
        raise SettingsError(f"{what} settings: {'; '.join(problems)}") from None
