"""The zero-downtime deploy procedure against the real engine, with the real gateway image and a
stand-in serving container (tests/release/fake_serving): no Airflow, no model.

From the host the deploy code reaches the containers by their bridge addresses (Linux); the
gateway's port is published on 127.0.0.1, where an open-loop client sends requests throughout.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from release import deploy as release_deploy
from release.target import DeployError, Release, http_json
from release.targets import compose as dp
from tests.helpers.load import OpenLoopClient
from tests.release.fakes import build_fake, stand_in

pytestmark = pytest.mark.docker

docker = pytest.importorskip("docker")


@pytest.fixture(scope="module")
def gateway_image(client, project_images) -> str:
    return project_images["GATEWAY_IMAGE"]


@pytest.fixture(scope="module")
def stack(client, gateway_image, tmp_path_factory):
    """A network, an 'old' serving container (v1) and the gateway in front of it."""
    run = uuid.uuid4().hex[:8]
    labels = {"io.conveyor.test": run}
    images = {
        v: build_fake(client, f"conveyor-test/fake-serving:v{v}-{run}", v, ready=True)
        for v in ("1", "2")
    }
    images["never-ready"] = build_fake(
        client, f"conveyor-test/fake-serving:broken-{run}", "3", ready=False
    )
    network = client.networks.create(f"conveyor-test-{run}", labels=labels)
    updir = tmp_path_factory.mktemp("gateway")
    os.chmod(updir, 0o777)
    old_name = f"conveyor-test-{run}-v1"
    old = client.containers.run(
        images["1"],
        name=old_name,
        detach=True,
        network=network.name,
        labels={**labels, dp.ROLE_LABEL: dp.ROLE},
    )
    gateway = client.containers.run(
        gateway_image,
        name=f"conveyor-test-{run}-gateway",
        detach=True,
        network=network.name,
        labels=labels,
        environment={"GATEWAY_DEFAULT_UPSTREAM": f"{old_name}:8000"},
        volumes={str(updir): {"bind": "/var/lib/conveyor-gateway", "mode": "rw"}},
        ports={"8000/tcp": ("127.0.0.1", None)},
        read_only=True,
        tmpfs={"/tmp": "rw,size=16m"},
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
    )
    try:
        gateway.reload()
        port = int(gateway.ports["8000/tcp"][0]["HostPort"])
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if http_json(f"{url}/metadata", timeout=2)[1].get("model_version") == stand_in("1"):
                    break
            except (OSError, AttributeError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    "gateway never answered from the v1 container:\n"
                    + gateway.logs().decode(errors="replace")
                )
            time.sleep(0.5)
        yield {
            "run": run,
            "network": network.name,
            "gateway": gateway.name,
            "url": url,
            "upstream_file": updir / "upstream.conf",
            "images": images,
            "old": old,
        }
    finally:
        for c in client.containers.list(all=True, filters={"label": f"io.conveyor.test={run}"}):
            c.remove(force=True)
        for c in client.containers.list(all=True, filters={"network": network.name}):
            c.remove(force=True)
        network.remove()
        for tag in images.values():
            client.images.remove(tag, force=True)


def _swap(stack, image: str, ready_timeout: float = 120) -> dp.Swap:
    release = Release(
        image=image,
        ready_timeout=ready_timeout,
        labels={"io.conveyor.test": stack["run"]},
        smoke_payload={"inputs": [[0]]},
    )
    return dp.Swap(
        release=release,
        network=stack["network"],
        gateway=stack["gateway"],
        upstream_file=stack["upstream_file"],
        name_prefix=f"conveyor-test-{stack['run']}",
        memory_mb=256,
    )


def test_swap_under_load_loses_no_request(client, stack):
    with OpenLoopClient(f"{stack['url']}/predict", {"x": 1}, rate=100) as load:
        time.sleep(1.0)
        summary = dp.swap_in(client, _swap(stack, stack["images"]["2"]))
        time.sleep(1.5)
    result = load.result
    assert summary["changed"] is True and summary["model_version"] == stand_in("2")
    assert result.failures == [], f"{len(result.failures)} of {result.sent}: {result.failures[:5]}"
    # Answers came from v1, then from v2 only (around the switch both finish in flight).
    assert set(result.versions) == {stand_in("1"), stand_in("2")}, result.versions
    assert result.completed[0] == stand_in("1")
    assert set(result.completed[-50:]) == {stand_in("2")}
    assert http_json(f"{stack['url']}/metadata")[1]["model_version"] == stand_in("2")
    # The old container (ours: it carries the role label) is stopped and removed.
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(stack["old"].id)
    assert summary["container"] in stack["upstream_file"].read_text()


def test_redeploying_the_live_image_changes_nothing(client, stack):
    before = stack["upstream_file"].read_text()
    summary = dp.swap_in(client, _swap(stack, stack["images"]["2"]))
    assert summary["changed"] is False
    assert stack["upstream_file"].read_text() == before


def test_never_ready_image_is_removed_and_the_old_one_keeps_serving(client, stack):
    before = stack["upstream_file"].read_text()
    bad = stack["images"]["never-ready"]
    with OpenLoopClient(f"{stack['url']}/predict", {"x": 1}, rate=50) as load:
        with pytest.raises(DeployError, match="not ready after 4 s") as err:
            dp.swap_in(client, _swap(stack, bad, ready_timeout=4))
    assert "old container keeps serving" in str(err.value)
    assert load.result.failures == []
    assert set(load.result.versions) == {stand_in("2")}
    assert stack["upstream_file"].read_text() == before
    leftovers = [
        c.name
        for c in client.containers.list(
            all=True, filters={"ancestor": bad, "label": f"io.conveyor.test={stack['run']}"}
        )
    ]
    assert leftovers == []


def test_cli_reports_a_missing_image_in_one_line(stack, capsys, monkeypatch):
    for name, value in (
        ("DEPLOY_TARGET", "compose"),
        ("SERVING_NETWORK", stack["network"]),
        ("GATEWAY_CONTAINER", stack["gateway"]),
        ("GATEWAY_UPSTREAM_FILE", str(stack["upstream_file"])),
        ("SERVING_CONTAINER_PREFIX", f"conveyor-test-{stack['run']}"),
        ("SERVING_MEMORY_MB", "256"),
        ("SERVING_CPUS", "1"),
        ("DOCKER_HOST", os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")),
    ):
        monkeypatch.setenv(name, value)
    code = release_deploy.main(["--image", "conveyor-test/does-not-exist:v0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4
    assert err == [
        "deploy: failed: image conveyor-test/does-not-exist:v0 does not exist on this engine"
    ]


def test_upstream_file_round_trip(tmp_path):
    path = tmp_path / "upstream.conf"
    assert dp.read_upstream(path) is None
    dp.write_upstream(path, "conveyor-serving-x:8000")
    assert dp.read_upstream(path) == "conveyor-serving-x:8000"
    assert json.dumps(path.read_text()).count("server ") == 1
