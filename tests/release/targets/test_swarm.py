"""The `swarm` target on a real multi-node swarm: engines in containers on this machine
(scripts/swarm.sh up, the session's `local_swarm` of tests/conftest.py), the registry, the
manager's socket proxy, the gateway published on 127.0.0.1. Stand-in serving images
(tests/release/fake_serving) answer with their version; the swarm starts on v1.

Under open-loop load through the gateway: a rolling update to v2 (3 replicas on >= 2 nodes, no
failed request, v1 then v2); a never-healthy image rolled back by Swarm (no failed request, the
release fails with the reason). The same swarm then takes the DAG's deploy and loses a node
(tests/e2e/test_swarm_e2e.py). Every name is this run's own; everything is removed at the end.
"""

from __future__ import annotations

import time

import pytest

from release.target import DeployError, Release, engine
from release.targets import swarm as target
from tests.helpers.load import OpenLoopClient
from tests.release.fakes import build_fake, stand_in

pytestmark = pytest.mark.docker

RATE = 200  # requests/s through the gateway
REPLICAS = 3


@pytest.fixture(scope="module")
def swarm(client, local_swarm):
    run = local_swarm.run
    images = {
        "2": build_fake(client, f"conveyor-test/fake-serving:v2-{run}", "2", ready=True),
        "never-ready": build_fake(
            client, f"conveyor-test/fake-serving:broken-{run}", "3", ready=False
        ),
    }
    try:
        yield {
            "images": images,
            "settings": local_swarm.release_settings(
                local_swarm.wiring, SERVING_MEMORY_MB=1024, SERVING_CPUS=1.0
            ),
            "url": local_swarm.wiring["SWARM_GATEWAY_URL"],
        }
    finally:
        for tag in images.values():
            client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def manager(swarm):
    c = engine(swarm["settings"].SWARM_DOCKER_HOST, "Swarm manager")
    yield c
    c.close()


def _load(swarm, **kw) -> OpenLoopClient:
    return OpenLoopClient(
        f"{swarm['url']}/predict", {"inputs": [[0]]}, rate=RATE, max_requests=RATE * 240, **kw
    )


def _replicas_by_node(manager, service: str) -> dict[str, list[str]]:
    """Running serving tasks: node hostname -> images."""
    nodes: dict[str, list[str]] = {}
    for t in manager.api.tasks(filters={"service": service, "desired-state": "running"}):
        if t["Status"]["State"] == "running":
            host = manager.api.inspect_node(t["NodeID"])["Description"]["Hostname"]
            nodes.setdefault(host, []).append(target.image_of(t))
    return nodes


def _check_rate(result, seconds: float) -> None:
    """The open-loop client really sent through the whole window (a stalled client would make
    "no failed request" hollow). A bound a loaded 2-core machine meets with room to spare: a
    tenth of the schedule, not a throughput figure."""
    assert result.sent >= 0.1 * RATE * seconds, f"sent {result.sent} in {seconds:.1f} s"


def test_rolling_update_to_v2_loses_no_request(swarm, manager):
    settings = swarm["settings"]
    start = time.monotonic()
    with _load(swarm) as load:
        time.sleep(2)
        summary = target.deploy(Release(image=swarm["images"]["2"], ready_timeout=240), settings)
        answered_when_done = len(load.result.completed)
        time.sleep(3)
    result, seconds = load.result, time.monotonic() - start
    assert result.failures == [], f"{len(result.failures)} of {result.sent}: {result.failures[:5]}"
    _check_rate(result, seconds)
    assert summary["changed"] is True and summary["model_version"] == stand_in("2")
    assert summary["replicas"] == REPLICAS and sum(summary["nodes"].values()) == REPLICAS
    assert len(summary["nodes"]) >= 2, summary["nodes"]
    # v1 answered first, v2 only once the update was done (in-flight answers aside).
    assert result.completed[0] == stand_in("1") and set(result.versions) == {
        stand_in("1"),
        stand_in("2"),
    }
    after = result.completed[answered_when_done + RATE // 2 :]
    assert after and set(after) == {stand_in("2")}
    nodes = _replicas_by_node(manager, settings.SWARM_SERVICE)
    assert {image for images in nodes.values() for image in images} == {summary["registry_image"]}


def test_redeploying_the_live_image_changes_nothing(swarm, manager):
    settings = swarm["settings"]
    before = manager.api.inspect_service(settings.SWARM_SERVICE)["Version"]["Index"]
    summary = target.deploy(Release(image=swarm["images"]["2"], ready_timeout=60), settings)
    assert summary["changed"] is False
    assert manager.api.inspect_service(settings.SWARM_SERVICE)["Version"]["Index"] == before


def test_never_healthy_image_is_rolled_back_without_a_failed_request(swarm, manager):
    settings = swarm["settings"]
    live = target.image_of(manager.api.inspect_service(settings.SWARM_SERVICE))
    with _load(swarm) as load:
        with pytest.raises(DeployError, match="Swarm rolled .* back") as err:
            target.deploy(
                Release(image=swarm["images"]["never-ready"], ready_timeout=240), settings
            )
    result = load.result
    print(f"never-healthy release: {err.value}")
    assert result.failures == [], f"{len(result.failures)} of {result.sent}: {result.failures[:5]}"
    assert set(result.versions) == {stand_in("2")}
    assert "it never passed its healthcheck" in str(err.value)
    assert "previous image keeps serving" in str(err.value)
    assert target.image_of(manager.api.inspect_service(settings.SWARM_SERVICE)) == live
    nodes = _replicas_by_node(manager, settings.SWARM_SERVICE)
    assert sum(len(images) for images in nodes.values()) == REPLICAS


def test_the_managers_proxy_lets_through_only_the_swarm_targets_calls(swarm):
    """scripts/swarm.sh runs the socket proxy in manager mode: service inspect/update, tasks and
    nodes pass (the tests above used them); containers, exec, secrets, joining do not."""
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(swarm["settings"].SWARM_DOCKER_HOST.replace("tcp://", "http://"))
    service = swarm["settings"].SWARM_SERVICE

    def status(method: str, path: str) -> int:
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
        conn.request(
            method,
            path,
            body=b"{}" if method == "POST" else None,
            headers={"Content-Type": "application/json"},
        )
        code = conn.getresponse().status
        conn.close()
        return code

    assert status("GET", f"/v1.41/services/{service}") == 200
    assert status("GET", "/v1.41/tasks") == 200
    for method, path in (
        ("GET", "/v1.41/containers/json"),
        ("POST", "/v1.41/containers/create"),
        ("GET", "/v1.41/secrets"),
        ("POST", "/v1.41/services/create"),
        ("POST", "/v1.41/swarm/join"),
        ("GET", "/v1.41/images/json"),
        ("DELETE", f"/v1.41/services/{service}"),
    ):
        assert status(method, path) == 403, (method, path)
