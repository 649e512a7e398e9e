"""Extra CA certificates reach the training image's builder stage only: a build with a marker
CA appended to the extra bundle leaves no trace of it (its PEM text, its DER bytes, the bundle
file) in any layer of the final image, while the builder stage does hold it (so the scan can
find it). Behind a TLS-inspecting proxy, a build without the extra CA fails TLS."""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import ssl
import tarfile
import uuid
from pathlib import Path

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.docker.toolchain import DOCKER, ROOT, docker, run

pytestmark = pytest.mark.docker

# What the training image's Dockerfile copies from the context (plus the Dockerfile itself).
CONTEXT_FILES = [
    ".dockerignore", "pyproject.toml", "uv.lock", "dvc.yaml", "params.yaml", "pipelines",
]  # fmt: skip


def marker_ca() -> tuple[bytes, bytes]:
    """A fresh self-signed CA: (PEM, DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"conveyor-test-ca-{uuid.uuid4()}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), cert.public_bytes(
        serialization.Encoding.DER
    )


def make_context(dest: Path, extra_ca: bytes | None) -> Path:
    for name in CONTEXT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    (dest / ".build" / "ca").mkdir(parents=True)
    (dest / ".build" / "ca" / ".keep").touch()
    if extra_ca is not None:
        (dest / ".build" / "ca" / "extra-ca.pem").write_bytes(extra_ca)
    return dest


def build(context: Path, python_image: str, tag: str, *extra: str, check: bool = True):
    return run(
        DOCKER, "build", "-f", "pipelines/Dockerfile",
        "--build-arg", f"PYTHON_IMAGE={python_image}", "-t", tag, *extra, ".",
        cwd=context, timeout=1500, check=check, env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )  # fmt: skip


def files_in_layers(image: str, tmp: Path):
    """(layer, path, bytes) of every regular file in every layer of `image` (docker save)."""
    archive = tmp / "image.tar"
    docker("save", "-o", archive, image, timeout=600)
    with tarfile.open(archive) as outer:
        layers = [m for m in outer.getmembers() if m.name.endswith("layer.tar")]
        assert layers, "docker save wrote no layers"
        for layer in layers:
            with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
                for member in inner.getmembers():
                    if member.isfile():
                        yield layer.name, member.name, inner.extractfile(member).read()


def traces(image: str, tmp: Path, needles: dict[str, bytes]) -> list[str]:
    found = []
    for layer, path, data in files_in_layers(image, tmp):
        found += [f"{what} in {path} ({layer})" for what, n in needles.items() if n in data]
    return found


@pytest.fixture(scope="module")
def ca_builds(base_images, tmp_path_factory):
    """The training image and its builder stage, built with a marker CA in the extra bundle."""
    pem, der = marker_ca()
    user_bundle = os.environ.get("EXTRA_CA_CERTS") or "/etc/ssl/certs/ca-certificates.crt"
    bundle = (Path(user_bundle).read_bytes() if Path(user_bundle).is_file() else b"") + pem
    context = make_context(tmp_path_factory.mktemp("ca-context"), bundle)
    tag = uuid.uuid4().hex[:8]
    final, builder = f"conveyor-test/train:ca-{tag}", f"conveyor-test/train-builder:ca-{tag}"
    try:
        build(context, base_images["PYTHON_IMAGE"], final)
        build(context, base_images["PYTHON_IMAGE"], builder, "--target", "builder")
        needles = {"marker PEM": pem.splitlines()[1], "marker DER": der, "extra bundle": bundle}
        yield final, builder, needles
    finally:
        docker("rmi", "-f", final, builder, check=False)


def test_extra_ca_is_in_no_layer_of_the_final_image(ca_builds, tmp_path):
    final, _, needles = ca_builds
    assert traces(final, tmp_path, needles) == []


def test_the_layer_scan_finds_the_ca_in_the_builder_stage(ca_builds, tmp_path):
    _, builder, needles = ca_builds
    found = traces(builder, tmp_path, needles)
    assert any(hit.startswith("marker PEM") for hit in found), found
    assert any(hit.startswith("extra bundle") for hit in found), found


def tls_is_intercepted(host: str = "pypi.org") -> bool:
    """True when the public CAs (certifi) cannot verify PyPI: a TLS-inspecting proxy is there."""
    context = ssl.create_default_context(cafile=certifi.where())
    try:
        with socket.create_connection((host, 443), timeout=15) as sock:
            with context.wrap_socket(sock, server_hostname=host):
                return False
    except ssl.SSLCertVerificationError:
        return True


def test_build_without_the_extra_ca_fails_tls_behind_a_proxy(base_images, tmp_path):
    if not tls_is_intercepted():
        pytest.skip("no TLS-inspecting proxy here: builds need no extra CA")
    context = make_context(tmp_path, extra_ca=None)
    tag = f"conveyor-test/train-builder:noca-{uuid.uuid4().hex[:8]}"
    try:
        out = build(context, base_images["PYTHON_IMAGE"], tag, "--target", "builder", check=False)
    finally:
        docker("rmi", "-f", tag, check=False)
    assert out.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in out.stdout + out.stderr, (out.stdout + out.stderr)[-2000:]
