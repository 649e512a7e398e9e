"""Zero-downtime deploy of a serving image behind the gateway (the DAG's `deploy` task).

    python -m release.compose --image conveyor/serving-model:conveyor-v3 \
        --network conveyor-serving --gateway conveyor-gateway \
        --upstream-file /gateway/upstream.conf [--smoke-file serving_input_example.json]

The procedure (measured on this machine to lose no request at 200 req/s):

1. start the new serving container on the network (labels: role, image, model version, run);
2. wait for its `/ready` and a smoke prediction that answers with the expected model version;
   if it never gets there: remove it, leave the gateway and the old container alone, exit 4 with
   the reason and the container's last log lines;
3. rewrite the gateway's upstream file (atomic rename on the shared volume) and send SIGHUP to
   the gateway through the Docker API's kill endpoint (exec is refused by the socket proxy);
   confirm through the gateway that the new container answers;
4. wait `--drain-seconds` for nginx's old workers to finish their in-flight requests, then stop
   (SIGTERM, graceful) and remove the old container.

Re-running with the image that is already live does nothing. The last stdout line is one JSON
object: image, container, model_version, previous, changed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.build_serving_image import (
    LABEL_MODEL_NAME,
    LABEL_MODEL_VERSION,
    docker_client,
    report,
)
from pipelines.common import PipelineError, atomic_write_text

ROLE_LABEL = "io.conveyor.role"
ROLE = "serving"
UPSTREAM_TEMPLATE = """\
# Written by release.compose: the serving container the gateway sends traffic to.
upstream conveyor_serving {{
    server {target} max_fails=0;
    keepalive 16;
    keepalive_timeout 2s;
}}
"""
_SERVER_RE = re.compile(r"^\s*server\s+([^\s;]+)", re.MULTILINE)


class DeployError(PipelineError):
    """The new container could not take traffic: the old one keeps serving (exit code 4, which
    the DAG fails without retrying: the same image would fail the same way)."""

    exit_code = 4


@dataclass
class DeployConfig:
    image: str
    network: str
    gateway: str  # gateway container name
    upstream_file: Path
    port: int = 8000
    name_prefix: str = "conveyor-serving"
    ready_timeout: float = 120.0
    switch_timeout: float = 15.0
    drain_seconds: float = 1.0
    stop_timeout: int = 30
    smoke_payload: Any = None  # JSON body for /invocations; None: GET /metadata only
    environment: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    mem_limit: str | None = "1g"
    hardened: bool = True  # read-only root fs, no capabilities, no-new-privileges


# ----------------------------------------------------------------------------- HTTP
def http_json(url: str, payload: Any = None, timeout: float = 5.0) -> tuple[int, Any, dict]:
    """One request on a fresh connection: status, decoded JSON body (or text), headers."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, body, headers = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        status, body, headers = exc.code, exc.read(), dict(exc.headers)
    try:
        return status, json.loads(body), headers
    except ValueError:
        return status, body.decode(errors="replace"), headers


# ----------------------------------------------------------------------------- gateway
def read_upstream(path: Path) -> str | None:
    """host:port of the gateway's current upstream, or None."""
    try:
        match = _SERVER_RE.search(path.read_text())
    except FileNotFoundError:
        return None
    return match.group(1) if match else None


def write_upstream(path: Path, target: str) -> None:
    atomic_write_text(path, UPSTREAM_TEMPLATE.format(target=target))
    os.chmod(path, 0o644)


def reload_gateway(client, gateway: str) -> None:
    """SIGHUP through the Docker API: nginx re-reads its config, old workers finish in-flight."""
    client.containers.get(gateway).kill(signal="SIGHUP")


# ----------------------------------------------------------------------------- containers
def container_for_host(client, host: str, network: str):
    """The container a gateway upstream host names: its container name or a network alias."""
    import docker

    try:
        return client.containers.get(host)
    except docker.errors.NotFound:
        pass
    for container in client.containers.list(all=True, filters={"network": network}):
        net = container.attrs["NetworkSettings"]["Networks"].get(network) or {}
        if host in (net.get("Aliases") or []) or host == container.attrs["Config"]["Hostname"]:
            return container
    return None


def container_name(prefix: str, image_tag: str, image_id: str) -> str:
    last = image_tag.rsplit("/", 1)[-1]
    slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", last.split(":", 1)[-1])  # the tag: <name>-v<version>
    return f"{prefix}-{slug}-{image_id.split(':')[-1][:12]}"


def ip_on(container, network: str) -> str:
    """The container's address on the network (HTTP checks use it: works from the network and
    from a Linux host alike; the gateway's upstream file names the container instead)."""
    container.reload()
    net = container.attrs["NetworkSettings"]["Networks"].get(network)
    if not net or not net.get("IPAddress"):
        raise DeployError(f"container {container.name} has no address on network {network}")
    return net["IPAddress"]


def last_logs(container, lines: int = 20) -> str:
    try:
        return container.logs(tail=lines).decode(errors="replace").strip()
    except Exception as exc:  # noqa: BLE001 - best effort, only for the error message
        return f"(logs unavailable: {exc})"


def remove(container) -> None:
    import docker

    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass


def start_candidate(client, cfg: DeployConfig, image, name: str):
    import docker

    try:  # a leftover of an earlier failed attempt: never the live one (checked by the caller)
        remove(client.containers.get(name))
    except docker.errors.NotFound:
        pass
    hardening: dict[str, Any] = {}
    if cfg.hardened:
        hardening = dict(read_only=True, tmpfs={"/tmp": "rw,size=64m"}, cap_drop=["ALL"],
                         security_opt=["no-new-privileges"])
    labels = {ROLE_LABEL: ROLE, "io.conveyor.image": cfg.image,
              **{k: v for k, v in image.labels.items() if k.startswith("io.conveyor.")},
              **cfg.labels}
    # The model's identity from the image's labels (the build's source of truth), so that the
    # container reports it even if the image's own ENV lost it.
    identity = {env: image.labels[label] for env, label in
                (("MODEL_NAME", LABEL_MODEL_NAME), ("MODEL_VERSION", LABEL_MODEL_VERSION))
                if image.labels.get(label)}
    return client.containers.run(
        image.id,
        name=name,
        detach=True,
        network=cfg.network,
        environment={**identity, **cfg.environment},
        labels=labels,
        restart_policy={"Name": "unless-stopped"},
        mem_limit=cfg.mem_limit,
        **hardening,
    )


def wait_ready(container, base_url: str, cfg: DeployConfig, expected_version: str) -> dict:
    """Poll /ready, then a smoke prediction; raise DeployError with the reason on timeout."""
    deadline = time.monotonic() + cfg.ready_timeout
    reason = "no answer yet"
    while time.monotonic() < deadline:
        container.reload()
        if container.status in ("exited", "dead"):
            code = container.attrs["State"].get("ExitCode")
            raise DeployError(f"new container exited with code {code} before it was ready")
        try:
            status, body, _ = http_json(f"{base_url}/ready", timeout=3)
            if status == 200:
                return smoke(base_url, cfg, expected_version)
            reason = f"/ready answered {status}: {str(body)[:200]}"
        except (OSError, urllib.error.URLError) as exc:
            reason = f"/ready unreachable: {exc}"
        time.sleep(1)
    raise DeployError(f"new container not ready after {cfg.ready_timeout:.0f} s ({reason})")


def smoke(base_url: str, cfg: DeployConfig, expected_version: str) -> dict:
    status, meta, _ = http_json(f"{base_url}/metadata", timeout=5)
    if status != 200 or not isinstance(meta, dict):
        raise DeployError(f"smoke: /metadata answered {status}: {str(meta)[:200]}")
    served = str(meta.get("model_version", ""))
    if expected_version and served != expected_version:
        raise DeployError(f"smoke: serves model version {served!r}, expected {expected_version!r}")
    if cfg.smoke_payload is not None:
        status, body, _ = http_json(f"{base_url}/invocations", cfg.smoke_payload, timeout=10)
        if status != 200:
            raise DeployError(f"smoke prediction answered {status}: {str(body)[:300]}")
    return meta


def confirm_switch(gateway_url: str, new_ip: str, cfg: DeployConfig) -> None:
    """The gateway (fresh connections) answers from the new container's address."""
    deadline = time.monotonic() + cfg.switch_timeout
    seen = None
    while time.monotonic() < deadline:
        try:
            _, _, headers = http_json(f"{gateway_url}/health", timeout=3)
            seen = headers.get("X-Conveyor-Upstream")
            if seen == f"{new_ip}:{cfg.port}":
                return
        except (OSError, urllib.error.URLError) as exc:
            seen = f"error: {exc}"
        time.sleep(0.2)
    raise DeployError(f"gateway did not switch to {new_ip}:{cfg.port} (last upstream: {seen})")


# ----------------------------------------------------------------------------- procedure
def deploy(client, cfg: DeployConfig) -> dict[str, Any]:
    import docker

    try:
        image = client.images.get(cfg.image)
    except docker.errors.ImageNotFound:
        raise DeployError(f"image {cfg.image} does not exist on this engine") from None
    expected_version = image.labels.get(LABEL_MODEL_VERSION, "")
    previous_target = read_upstream(cfg.upstream_file)
    previous = None
    if previous_target:
        previous = container_for_host(client, previous_target.rsplit(":", 1)[0], cfg.network)
    if previous is not None and previous.image.id == image.id and previous.status == "running":
        print(f"deploy: {cfg.image} is already live in {previous.name}: nothing to do",
              file=sys.stderr)
        return {"image": cfg.image, "container": previous.name, "model_version": expected_version,
                "previous": previous.name, "changed": False}

    name = container_name(cfg.name_prefix, cfg.image, image.id)
    print(f"deploy: starting {name} from {cfg.image} on {cfg.network}", file=sys.stderr)
    new = start_candidate(client, cfg, image, name)
    try:
        new_ip = ip_on(new, cfg.network)
        meta = wait_ready(new, f"http://{new_ip}:{cfg.port}", cfg, expected_version)
        print(f"deploy: {name} ready, serving model version {meta.get('model_version')}",
              file=sys.stderr)
    except BaseException as exc:
        logs = last_logs(new)
        remove(new)
        if isinstance(exc, DeployError):
            raise DeployError(f"{exc}; {name} removed, the old container keeps serving. "
                              f"Its last log lines:\n{logs}") from None
        raise

    target = f"{name}:{cfg.port}"
    write_upstream(cfg.upstream_file, target)
    try:
        reload_gateway(client, cfg.gateway)
        gateway_ip = ip_on(client.containers.get(cfg.gateway), cfg.network)
        confirm_switch(f"http://{gateway_ip}:{cfg.port}", new_ip, cfg)
    except BaseException:
        # Put the old upstream back and leave nothing half-deployed.
        if previous_target:
            write_upstream(cfg.upstream_file, previous_target)
            try:
                reload_gateway(client, cfg.gateway)
            except docker.errors.DockerException as exc:
                print(f"deploy: could not reload the gateway back: {exc}", file=sys.stderr)
        remove(new)
        raise
    print(f"deploy: gateway now sends traffic to {target}", file=sys.stderr)

    time.sleep(cfg.drain_seconds)  # nginx's old workers finish their in-flight requests
    if previous is not None and previous.id != new.id:
        print(f"deploy: stopping the old container {previous.name}", file=sys.stderr)
        previous.stop(timeout=cfg.stop_timeout)
        if previous.labels.get(ROLE_LABEL) == ROLE:
            remove(previous)  # ours; a Compose-managed one is only stopped
    return {"image": cfg.image, "container": name, "model_version": meta.get("model_version"),
            "previous": previous.name if previous is not None else previous_target,
            "changed": True}


def load_smoke_payload(path: Path | None) -> Any:
    """MLflow's serving input example (dataframe_split etc.), if the file is there."""
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PipelineError(f"smoke input {path} is not JSON: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m release.compose",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--network", default=os.environ.get("SERVING_NETWORK", "conveyor"))
    parser.add_argument("--gateway", default=os.environ.get("GATEWAY_CONTAINER",
                                                            "conveyor-gateway"))
    parser.add_argument("--upstream-file", type=Path,
                        default=Path(os.environ.get("GATEWAY_UPSTREAM_FILE",
                                                    "/gateway/upstream.conf")))
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--smoke-file", type=Path, default=None)
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--drain-seconds", type=float, default=1.0)
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the new serving container")
    args = parser.parse_args(argv)

    def run() -> dict[str, Any]:
        cfg = DeployConfig(
            image=args.image, network=args.network, gateway=args.gateway,
            upstream_file=args.upstream_file, port=args.port,
            ready_timeout=args.ready_timeout, drain_seconds=args.drain_seconds,
            smoke_payload=load_smoke_payload(args.smoke_file),
            labels=dict(kv.split("=", 1) for kv in args.label if "=" in kv),
            environment=dict(kv.split("=", 1) for kv in args.env if "=" in kv),
        )
        return deploy(docker_client(), cfg)

    return report("deploy: failed", run)


if __name__ == "__main__":
    sys.exit(main())
