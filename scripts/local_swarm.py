"""A throwaway multi-node Swarm on this machine (scripts/swarm.sh) for a test or a benchmark: its
own names (`<name>-<run>`), free 127.0.0.1 ports, three nodes, and the release settings that
reach it.

    swarm = LocalSwarm("conveyor-test", first_image, SERVING_REPLICAS="3", ...)
    try:
        wiring = swarm.up()               # SWARM_SERVICE, SWARM_REGISTRY, SWARM_GATEWAY_URL, ...
        settings = swarm.release_settings(wiring, SERVING_CPUS=0.5, SERVING_MEMORY_MB=128)
    finally:
        swarm.down()
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class SwarmUpError(RuntimeError):
    """`scripts/swarm.sh up` failed; the message ends with its last output."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSwarm:
    def __init__(
        self, name: str, serving_image: str, run: str | None = None, **settings: str
    ) -> None:
        """`run`: the id in every name (new if not given); `settings`: the other variables
        scripts/swarm.sh reads (SWARM_UPDATE_MONITOR, SERVING_REPLICAS, SERVING_CPUS,
        SERVING_MEMORY_MB, SWARM_CLIENT_NETWORK)."""
        self.run = run or uuid.uuid4().hex[:8]
        self.prefix = f"{name}-{self.run}"
        self.stack = f"{name.replace('-', '')}{self.run}"  # stack names take no dashes
        self.env = {
            **os.environ,
            "SWARM_PREFIX": self.prefix,
            "SWARM_NODES": "3",
            "SWARM_STACK": self.stack,
            "SWARM_GATEWAY_PORT": str(free_port()),
            "SWARM_REGISTRY_PORT": str(free_port()),
            "SWARM_SERVING_IMAGE": serving_image,
            # set, so that swarm.sh does not take the user's from .env: joined to no network
            # (the user's stack's) unless asked
            "SWARM_CLIENT_NETWORK": "",
            **settings,
        }

    def _script(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "scripts/swarm.sh", command],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def up(self, timeout: float = 900) -> dict[str, str]:
        """The swarm up and serving; its release settings (the KEY=VALUE lines it prints)."""
        proc = self._script("up", timeout)
        if proc.returncode != 0:
            raise SwarmUpError(f"scripts/swarm.sh up failed:\n{proc.stderr[-4000:]}")
        return dict(line.split("=", 1) for line in proc.stdout.split())

    def down(self) -> None:
        """Everything it made (containers, volumes, network), whatever state it is in."""
        self._script("down", 300)

    def release_settings(self, wiring: dict[str, str], **sizes: Any) -> Any:
        """SwarmSettings for release.targets.swarm from the host: the manager's socket proxy
        is reached at its address on the swarm's bridge network."""
        import docker

        from release.settings import SwarmSettings

        proxy = docker.from_env().containers.get(f"{self.prefix}-manager-proxy")
        proxy_ip = proxy.attrs["NetworkSettings"]["Networks"][self.prefix]["IPAddress"]
        return SwarmSettings(
            DEPLOY_TARGET="swarm",
            DOCKER_HOST=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
            SWARM_DOCKER_HOST=f"tcp://{proxy_ip}:2375",
            SWARM_SERVICE=wiring["SWARM_SERVICE"],
            SWARM_REGISTRY=wiring["SWARM_REGISTRY"],
            SWARM_REGISTRY_PUSH=wiring["SWARM_REGISTRY_PUSH"],
            **sizes,
        )
