"""promtool over the stack's Prometheus config and every alert rule, from the Prometheus image
itself (the promtool `make test` builds, no host install).

- the scrape config renders from the environment and passes `promtool check config`; a missing
  variable stops the container with its name;
- `promtool test rules` over monitoring/rule-tests/ passes, and every alert rule has a case where
  it fires and one where it does not;
- a rule test that expects the wrong outcome fails (the harness can fail).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.docker.toolchain import docker
from tests.monitoring.containers import monitoring_path, prometheus_env

pytestmark = pytest.mark.docker

SCRAPE_ENV = prometheus_env("conveyor-serving", "15s")


def _promtool(image: str, *args: str, mount: Path | None = None, check: bool = True):
    volume = ["-v", f"{mount}:/work:ro"] if mount else []
    return docker(
        "run", "--rm", *volume, "--entrypoint", "promtool", image, *args, check=check, timeout=120
    )


def _alert_names(rule_file: Path) -> set[str]:
    groups = yaml.safe_load(rule_file.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_the_rendered_scrape_config_passes_promtool(images):
    env = [arg for key, value in SCRAPE_ENV.items() for arg in ("-e", f"{key}={value}")]
    proc = docker(
        "run",
        "--rm",
        *env,
        images["PROMETHEUS_IMAGE"],
        "promtool",
        "check",
        "config",
        "/run/prometheus/prometheus.yml",
        timeout=120,
    )
    assert "SUCCESS" in proc.stdout
    assert "3 rule files found" in proc.stdout


def test_a_missing_variable_stops_prometheus_with_its_name(images):
    env = [
        arg
        for key, value in SCRAPE_ENV.items()
        if key != "SERVING_NETWORK"
        for arg in ("-e", f"{key}={value}")
    ]
    proc = docker("run", "--rm", *env, images["PROMETHEUS_IMAGE"], check=False, timeout=60)
    assert proc.returncode == 2
    assert "not set: SERVING_NETWORK" in proc.stderr


def test_every_rule_passes_its_unit_tests(images):
    tests = sorted(p.name for p in monitoring_path("rule-tests").glob("*.test.yml"))
    proc = _promtool(
        images["PROMETHEUS_IMAGE"],
        "test",
        "rules",
        *[f"/work/rule-tests/{name}" for name in tests],
        mount=monitoring_path(),
    )
    assert proc.stdout.count("SUCCESS") == len(tests), proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_case():
    alerts = set().union(*(_alert_names(p) for p in monitoring_path("rules").glob("*.yml")))
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in monitoring_path("rule-tests").glob("*.test.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert len(alerts) >= 9
    assert alerts - firing == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a quiet case"


def test_a_wrong_expectation_fails(images, tmp_path):
    """The drift rule's firing case turned into `no alert`: promtool must fail."""
    case = yaml.safe_load(monitoring_path("rule-tests", "drift.test.yml").read_text())
    case["rule_files"] = ["/rules/drift.yml"]
    for check in case["tests"][0]["alert_rule_test"]:
        check["exp_alerts"] = []
    (tmp_path / "wrong.test.yml").write_text(yaml.safe_dump(case))
    tmp_path.chmod(0o755)  # promtool runs as the image's non-root user
    proc = docker(
        "run",
        "--rm",
        "-v",
        f"{tmp_path}:/work:ro",
        "-v",
        f"{monitoring_path('rules')}:/rules:ro",
        "--entrypoint",
        "promtool",
        images["PROMETHEUS_IMAGE"],
        "test",
        "rules",
        "/work/wrong.test.yml",
        check=False,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr and "InputDrift" in proc.stdout + proc.stderr
