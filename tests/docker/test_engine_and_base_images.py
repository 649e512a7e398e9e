"""The engine answers; the base images resolve (stand-ins where no registry answers), are
reused while their inputs are unchanged, and the Python base keeps the official image's
contract (python3.11 at /usr/local/bin, pip that installs system-wide, CA bundle)."""

from __future__ import annotations

import json

import pytest

from tests.docker.toolchain import LABEL, ROOT, docker, read_env, run

pytestmark = pytest.mark.docker


def test_engine_answers(engine):
    info = json.loads(docker("info", "--format", "{{json .}}").stdout)
    assert info["ServerVersion"], info
    # Idempotent: a second call with the engine running does nothing and succeeds.
    run("bash", "scripts/ensure-docker.sh", timeout=60)


def test_base_images_resolved_and_present(base_images):
    assert set(base_images) == {"DEBIAN_IMAGE", "PYTHON_IMAGE", "POSTGRES_IMAGE"}
    for ref in base_images.values():
        docker("image", "inspect", ref)


def test_base_images_are_reused_while_inputs_unchanged(base_images):
    ids = {
        ref: docker("image", "inspect", "-f", "{{.Id}}", ref).stdout.strip()
        for ref in base_images.values()
    }
    out = run("bash", "scripts/base-images.sh", timeout=120)
    assert read_env(ROOT / ".build" / "base-images.env") == base_images
    for ref, image_id in ids.items():
        assert docker("image", "inspect", "-f", "{{.Id}}", ref).stdout.strip() == image_id, (
            out.stderr
        )
    assert "building" not in out.stderr and "debootstrap" not in out.stderr, out.stderr


def test_standins_carry_their_input_hash(base_images):
    standins = [ref for ref in base_images.values() if ref.startswith("conveyor-base/")]
    if not standins:
        pytest.skip("every base image came from a registry: no stand-ins here")
    for ref in standins:
        label = docker(
            "image", "inspect", "-f", '{{ index .Config.Labels "conveyor.input-hash" }}', ref
        )
        assert len(label.stdout.strip()) == 16, ref


def test_python_base_keeps_the_official_contract(base_images):
    script = (
        "set -e; cd /usr/local/bin;"
        'test "$(readlink -f python3)" = "$(readlink -f python3.11)";'
        'test "$(readlink -f python)" = "$(readlink -f python3.11)";'
        "python --version; pip --version;"
        "python -c 'import ssl, sqlite3, venv; ssl.create_default_context()';"
        "test -s /etc/ssl/certs/ca-certificates.crt;"
        "python -m pip install --no-index --dry-run pip >/dev/null"
    )
    out = docker("run", "--rm", "--label", LABEL, base_images["PYTHON_IMAGE"], "bash", "-c", script)
    assert "Python 3.11" in out.stdout, out.stdout
