"""hadolint runs clean over every Dockerfile of the repository, with the project's
.hadolint.yaml, and that configuration really raises the rules hadolint leaves off."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.docker.toolchain import ROOT

pytestmark = pytest.mark.unit

HADOLINT = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")


def dockerfiles() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "*Dockerfile*"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=30,
    ).stdout.split()  # fmt: skip
    return [path for path in listed if (ROOT / path).is_file()]


def hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HADOLINT, "--no-color", *args],
        cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_every_dockerfile_is_lint_clean():
    files = dockerfiles()
    assert "pipelines/Dockerfile" in files and "docker/postgres/Dockerfile" in files
    result = hadolint(*files)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_config_raises_root_user_and_missing_healthcheck():
    bad = 'FROM debian:bookworm-slim\nUSER root\nCMD ["bash"]\n'
    out = hadolint("-", stdin=bad)
    assert out.returncode != 0
    assert "DL3002" in out.stdout and "DL3057" in out.stdout, out.stdout


def test_every_ignored_rule_has_a_reason():
    config = Path(ROOT / ".hadolint.yaml").read_text()
    ignored = config.split("\nignored:", 1)[1].split()
    rules = [word for word in ignored if word.startswith("DL") or word.startswith("SC")]
    assert rules, "no ignored rules listed"
    for rule in rules:
        assert f"#   {rule} " in config, f"{rule} is ignored without a reason in .hadolint.yaml"
