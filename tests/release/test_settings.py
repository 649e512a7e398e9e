"""Release settings: every missing or bad variable is named in one line, exit code 2."""

from __future__ import annotations

import pytest

from release import deploy as release_deploy
from release import settings as rs

pytestmark = pytest.mark.unit

RELEASE_VARS = (
    "DEPLOY_TARGET",
    "DOCKER_HOST",
    "SERVING_NETWORK",
    "GATEWAY_CONTAINER",
    "GATEWAY_UPSTREAM_FILE",
    "SWARM_DOCKER_HOST",
    "SWARM_SERVICE",
    "SWARM_REGISTRY",
    "SWARM_REGISTRY_PUSH",
    "SERVING_MEMORY_MB",
    "SERVING_CPUS",
)


@pytest.fixture(autouse=True)
def _no_release_env(monkeypatch):
    for name in RELEASE_VARS:
        monkeypatch.delenv(name, raising=False)


def test_a_missing_target_is_named(monkeypatch, capsys):
    assert release_deploy.main(["--image", "x:1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "deploy: failed: release settings: DEPLOY_TARGET is not set"
    )


def test_an_unknown_target_is_named(monkeypatch, capsys):
    monkeypatch.setenv("DEPLOY_TARGET", "nomad")
    assert release_deploy.main(["--image", "x:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deploy: failed: release settings: DEPLOY_TARGET='nomad': ")
    assert "'compose', 'swarm' or 'kubernetes'" in err


def test_each_missing_variable_of_the_target_is_named(monkeypatch):
    monkeypatch.setenv("DEPLOY_TARGET", "swarm")
    monkeypatch.setenv("SWARM_SERVICE", "")  # empty is missing (Compose's `${VAR:-}`)
    monkeypatch.setenv("SERVING_CPUS", "two")
    with pytest.raises(rs.SettingsError) as err:
        rs.load(rs.SwarmSettings)
    message = str(err.value)
    assert message.startswith("DEPLOY_TARGET=swarm settings: ")
    for name in (
        "DOCKER_HOST",
        "SWARM_DOCKER_HOST",
        "SWARM_SERVICE",
        "SWARM_REGISTRY_PUSH",
        "SWARM_REGISTRY",
    ):
        assert f"{name} is not set" in message
    assert "SERVING_CPUS='two'" in message
    assert "\n" not in message


def test_compose_keeps_the_dags_names(monkeypatch, tmp_path):
    for name, value in (
        ("DEPLOY_TARGET", "compose"),
        ("DOCKER_HOST", "tcp://proxy:2375"),
        ("SERVING_NETWORK", "net"),
        ("GATEWAY_CONTAINER", "gw"),
        ("GATEWAY_UPSTREAM_FILE", str(tmp_path / "u.conf")),
        ("SERVING_CONTAINER_PREFIX", "conveyor-serving"),
        ("SERVING_MEMORY_MB", "512"),
        ("SERVING_CPUS", "0.5"),
    ):
        monkeypatch.setenv(name, value)
    settings = rs.load(rs.ComposeSettings)
    assert (settings.SERVING_NETWORK, settings.GATEWAY_CONTAINER) == ("net", "gw")
    assert settings.GATEWAY_UPSTREAM_FILE == tmp_path / "u.conf"
    assert settings.SERVING_MEMORY_MB == 512 and settings.SERVING_CPUS == 0.5


@pytest.mark.parametrize("flag", ["--label", "--env"])
def test_key_value_flags_name_a_bad_pair(monkeypatch, capsys, flag):
    monkeypatch.setenv("DEPLOY_TARGET", "compose")
    assert release_deploy.main(["--image", "x:1", flag, "novalue"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"deploy: failed: {flag} takes KEY=VALUE, got 'novalue'"
    )
