"""`swarm` target: a rolling update of the replicated serving service (release/swarm/stack.yaml).

1. push the baked image from the build engine (DOCKER_HOST) to the swarm's registry
   (SWARM_REGISTRY_PUSH) and pin it by digest as the nodes see that registry (SWARM_REGISTRY);
2. change only the image (plus the run's labels and environment) of SWARM_SERVICE through the
   manager's socket proxy (SWARM_DOCKER_HOST); Swarm rolls it out by the service's own
   update_config: start-first, each new replica healthy (/ready) before an old one stops;
3. wait until the update completed and every replica runs the new image. A replica that never
   gets healthy fails the update; Swarm rolls back (failure_action: rollback) and the release
   fails, once the rollback completed, with Swarm's message and each failed task's error.

Re-running with the image that is already live changes nothing.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from release.build import LABEL_MODEL_VERSION
from release.settings import SwarmSettings
from release.target import DeployError, Release, engine

Settings = SwarmSettings

POLL_S = 1.0
ROLLED_BACK = ("rollback_completed", "rollback_paused")


def push(client, image_ref: str, registry: str) -> str:
    """Push `image_ref` to `registry` under the same repository and tag; its manifest digest."""
    import docker

    repository, _, tag = image_ref.rpartition(":")
    if not repository or "/" in tag:
        raise DeployError(f"image {image_ref} has no tag: deploy immutable tags only")
    try:
        image = client.images.get(image_ref)
    except docker.errors.ImageNotFound:
        raise DeployError(f"image {image_ref} does not exist on the build engine") from None
    target = f"{registry}/{repository}"
    image.tag(target, tag)
    digest = None
    try:
        for chunk in client.api.push(target, tag, stream=True, decode=True):
            if "error" in chunk:
                raise DeployError(f"push of {image_ref} to {registry} failed: {chunk['error']}")
            digest = (chunk.get("aux") or {}).get("Digest") or digest
    finally:
        client.images.remove(f"{target}:{tag}", noprune=True)  # only the extra tag
    if not digest:
        raise DeployError(f"push of {image_ref} to {registry} reported no digest")
    return digest


def service_spec(manager, name: str) -> dict:
    import docker

    try:
        return manager.api.inspect_service(name)
    except docker.errors.NotFound:
        raise DeployError(
            f"service {name} does not exist on the swarm (scripts/swarm.sh up)"
        ) from None


def image_of(task_or_spec: dict) -> str:
    spec = task_or_spec.get("Spec", task_or_spec)
    return spec.get("TaskTemplate", spec)["ContainerSpec"]["Image"]


def replicas(service: dict) -> int:
    return int(service["Spec"]["Mode"]["Replicated"]["Replicas"])


class Watch:
    """What the tasks of the new image did while we polled: the release's failure reason is
    what Swarm saw. A task seen `starting` (container up, healthcheck not yet passed) and never
    `running` never passed its healthcheck, however it ended (Swarm stops it, it exits 0)."""

    def __init__(self, manager, name: str, image: str):
        self.manager, self.name, self.image = manager, name, image
        self.nodes: dict[str, str] = {}
        self.tasks: dict[str, dict] = {}  # the new image's tasks, as last seen
        self.states: dict[str, list[str]] = {}  # and every state each was seen in
        self.rollback_message = ""

    def node(self, node_id: str) -> str:
        if node_id and node_id not in self.nodes:
            self.nodes[node_id] = self.manager.api.inspect_node(node_id)["Description"]["Hostname"]
        return self.nodes.get(node_id, "no node")

    def observe(self) -> list[dict]:
        """All tasks of the service now (and the new image's ones remembered)."""
        tasks = self.manager.api.tasks(filters={"service": self.name})
        for t in tasks:
            if image_of(t) == self.image:
                self.tasks[t["ID"]] = t
                seen = self.states.setdefault(t["ID"], [])
                if not seen or seen[-1] != t["Status"]["State"]:
                    seen.append(t["Status"]["State"])
        return tasks

    def reasons(self) -> str:
        lines = []
        for task_id, t in list(self.tasks.items())[-3:]:
            status, states = t["Status"], self.states[task_id]
            err = status.get("Err") or status.get("Message") or ""
            never = "starting" in states and "running" not in states
            hint = ": it never passed its healthcheck" if never else ""
            lines.append(
                f"task {task_id[:12]} on {self.node(t.get('NodeID', ''))} went "
                f"{' -> '.join(states)} ({err}){hint}"
            )
        return "; ".join(lines) or "no task of the new image was seen"


def updated_spec(service: dict, image: str, release: Release, image_labels: dict) -> dict:
    """The service's task template with only the image, labels and environment changed."""
    template = service["Spec"]["TaskTemplate"]
    container = dict(template["ContainerSpec"])
    container["Image"] = image
    container["Labels"] = {
        **(container.get("Labels") or {}),
        **{k: v for k, v in image_labels.items() if k.startswith("io.conveyor.")},
        "io.conveyor.image": release.image,
        **release.labels,
    }
    env = dict(e.split("=", 1) for e in container.get("Env") or [])
    env.update(release.environment)
    container["Env"] = [f"{k}={v}" for k, v in env.items()] or None
    return {**template, "ContainerSpec": container}


def converge(
    manager, name: str, image: str, timeout: float, stale_start: str | None = None
) -> dict[str, int]:
    """Wait for the update to complete with every replica on `image`: replicas per node.
    An update status that started at `stale_start` is an earlier update's, not this one's."""
    deadline = time.monotonic() + timeout
    watch = Watch(manager, name, image)
    state, message = "", ""
    while time.monotonic() < deadline:
        service = manager.api.inspect_service(name)
        status = service.get("UpdateStatus") or {}
        state, message = status.get("State", ""), status.get("Message", "")
        tasks = watch.observe()
        if stale_start and status.get("StartedAt") == stale_start:
            state = message = ""  # Swarm has not picked this update up yet
        elif state.startswith("rollback") and not watch.rollback_message:
            watch.rollback_message = message  # why Swarm rolls back (later: "completed")
        if state in ROLLED_BACK or state == "paused":
            raise DeployError(
                f"Swarm rolled {name} back: {watch.rollback_message or message}; "
                f"{watch.reasons()}. The previous image keeps serving."
            )
        running = [
            t for t in tasks if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
        ]
        on_new = [t for t in running if image_of(t) == image]
        if state in ("completed", "") and len(on_new) == len(running) == replicas(service):
            return dict(Counter(watch.node(t["NodeID"]) for t in on_new))
        time.sleep(POLL_S)
    raise DeployError(
        f"{name} not converged on {image} after {timeout:.0f} s "
        f"(update state {state or 'none'}: {message or 'no message'}); Swarm "
        "goes on with the update and rolls back by itself if a replica fails"
    )


def roll_out(build, manager, release: Release, settings: SwarmSettings) -> dict[str, Any]:
    name = settings.SWARM_SERVICE
    service = service_spec(manager, name)  # before pushing: a missing service fails fast
    digest = push(build, release.image, settings.SWARM_REGISTRY_PUSH)
    image = f"{settings.SWARM_REGISTRY}/{release.image}@{digest}"
    labels = build.images.get(release.image).labels or {}
    summary = {
        "target": "swarm",
        "image": release.image,
        "service": name,
        "registry_image": image,
        "model_version": labels.get(LABEL_MODEL_VERSION, ""),
        "replicas": replicas(service),
    }
    status = service.get("UpdateStatus") or {}
    if image_of(service) == image and status.get("State", "") not in ROLLED_BACK:
        nodes = converge(manager, name, image, release.ready_timeout)
        print(f"deploy: {release.image} is already live on {name}: nothing to do", file=sys.stderr)
        return {**summary, "nodes": nodes, "changed": False}

    started = time.monotonic()
    print(f"deploy: updating {name} to {image}", file=sys.stderr)
    manager.api.update_service(
        service["ID"],
        service["Version"]["Index"],
        task_template=updated_spec(service, image, release, labels),
        fetch_current_spec=True,
    )
    nodes = converge(manager, name, image, release.ready_timeout, status.get("StartedAt"))
    seconds = round(time.monotonic() - started, 1)
    print(f"deploy: {name} runs {release.image} on {nodes} after {seconds} s", file=sys.stderr)
    return {**summary, "nodes": nodes, "seconds": seconds, "changed": True}


def deploy(release: Release, settings: SwarmSettings) -> dict[str, Any]:
    """The target's entry point (release/deploy.py)."""
    build = engine(settings.DOCKER_HOST, "Docker (build engine)")
    manager = engine(settings.SWARM_DOCKER_HOST, "Swarm manager")
    try:
        return roll_out(build, manager, release, settings)
    finally:
        build.close()
        manager.close()
