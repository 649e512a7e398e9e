"""What every deploy target shares: the release to roll out, the error that rejects it, the
engine clients and one HTTP helper.

A target is a module with a `Settings` class (release/settings.py) and
`deploy(release, settings) -> dict`, the JSON summary the DAG keeps as XCom: image, model
version, changed (false: that image was already live) and the target's own details.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from pipelines.common import PipelineError

# How long one Docker API call may take (an image push streams for its whole duration).
API_TIMEOUT_S = 300


@dataclass(frozen=True)
class Release:
    """One baked serving image to put in front of the traffic."""

    image: str
    ready_timeout: float
    smoke_payload: Any = None  # JSON body for /invocations; None: GET /metadata only
    labels: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)


class DeployError(PipelineError):
    """The new version could not take traffic; the old one keeps serving (exit code 4, which
    the DAG fails without retrying: the same image would fail the same way)."""

    exit_code = 4


def engine(base_url: str, what: str):
    """A docker-py client for one engine API (`what` names it in the error)."""
    import docker

    try:
        client = docker.DockerClient(base_url=base_url, timeout=API_TIMEOUT_S)
        client.ping()
    except docker.errors.DockerException as exc:
        raise DeployError(f"{what} API not reachable at {base_url}: {exc}") from exc
    return client


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
