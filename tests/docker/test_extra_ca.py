"""The extra CA (a TLS-inspecting proxy's; by default the host's whole bundle) reaches the shared
builder image (docker/builder) and no final image:

- a marker CA appended to the extra bundle is in the builder image, and in no layer of a final
  image built FROM it (its PEM text, its DER bytes, the bundle file);
- every image `make images` built (.build/images.env) holds none of the CAs the extra bundle
  adds to the base image's own system bundle;
- behind a TLS-inspecting proxy, the builder without the extra CA fails TLS.
"""

from __future__ import annotations

import datetime
import json
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

from tests.docker.toolchain import DOCKER, ROOT, docker, read_env, run

pytestmark = pytest.mark.docker

# What the builder and the training image copy from the context (plus their Dockerfiles).
CONTEXT_FILES = [
    ".dockerignore", "pyproject.toml", "uv.lock", "dvc.yaml", "params.yaml", "pipelines",
    "docker/builder",
]  # fmt: skip
BEGIN = b"-----BEGIN CERTIFICATE-----"


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


def certificates(bundle: bytes) -> list[bytes]:
    """The PEM blocks of a bundle, normalised (one per certificate)."""
    end = b"-----END CERTIFICATE-----"
    return [BEGIN + part.split(end)[0].rstrip() + b"\n" + end + b"\n"
            for part in bundle.split(BEGIN)[1:]]  # fmt: skip


def needles_of(pem: bytes) -> dict[str, bytes]:
    """What betrays a certificate in a file: its first base64 line and its DER bytes."""
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    return {"PEM": pem.splitlines()[1], "DER": der}


def make_context(dest: Path, extra_ca: bytes | None) -> Path:
    for name in CONTEXT_FILES:
        source = ROOT / name
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    (dest / ".build" / "ca").mkdir(parents=True)
    (dest / ".build" / "ca" / ".keep").touch()
    if extra_ca is not None:
        (dest / ".build" / "ca" / "extra-ca.pem").write_bytes(extra_ca)
    return dest


def uv_version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("required-version"):
            return line.split("==")[1].strip('"')
    raise AssertionError("pyproject.toml has no required-version")


def build(context: Path, dockerfile: str, tag: str, *args: str, check: bool = True):
    return run(
        DOCKER, "build", "-f", dockerfile, "-t", tag, *args, ".",
        cwd=context, timeout=1500, check=check, env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )  # fmt: skip


def files_in_layers(image: str, tmp: Path, skip_layers: int = 0):
    """(layer, path, bytes) of every regular file in the layers of `image` past the first
    `skip_layers` (those of its base image)."""
    archive = tmp / f"{uuid.uuid4().hex}.tar"
    docker("save", "-o", archive, image, timeout=600)
    try:
        with tarfile.open(archive) as outer:
            manifest = json.load(outer.extractfile("manifest.json"))
            layers = manifest[0]["Layers"][skip_layers:]
            for layer in layers:
                with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
                    for member in inner.getmembers():
                        if member.isfile():
                            yield layer, member.name, inner.extractfile(member).read()
    finally:
        archive.unlink(missing_ok=True)


def traces(image: str, tmp: Path, needles: dict[str, bytes], skip_layers: int = 0) -> list[str]:
    found = []
    for layer, path, data in files_in_layers(image, tmp, skip_layers):
        found += [f"{what} in {path} ({layer})" for what, n in needles.items() if n in data]
    return found


def layer_count(image: str) -> int:
    out = docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", image).stdout
    return len(json.loads(out))


@pytest.fixture(scope="module")
def marker_builds(base_images, tmp_path_factory):
    """The builder and the training image FROM it, with a marker CA in the extra bundle."""
    pem, der = marker_ca()
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    bundle = (host_bundle.read_bytes() if host_bundle.is_file() else b"") + pem
    context = make_context(tmp_path_factory.mktemp("ca-context"), bundle)
    tag = uuid.uuid4().hex[:8]
    builder, final = f"conveyor-test/builder:ca-{tag}", f"conveyor-test/train:ca-{tag}"
    python = base_images["PYTHON_IMAGE"]
    try:
        build(
            context,
            "docker/builder/Dockerfile",
            builder,
            "--build-arg",
            f"PYTHON_IMAGE={python}",
            "--build-arg",
            f"UV_VERSION={uv_version()}",
        )
        build(
            context,
            "pipelines/Dockerfile",
            final,
            "--build-arg",
            f"PYTHON_IMAGE={python}",
            "--build-arg",
            f"BUILDER_IMAGE={builder}",
        )
        needles = {"marker PEM": pem.splitlines()[1], "marker DER": der, "extra bundle": bundle}
        yield builder, final, needles
    finally:
        docker("rmi", "-f", final, builder, check=False)


def test_the_marker_ca_is_in_no_layer_of_an_image_built_from_the_builder(marker_builds, tmp_path):
    _, final, needles = marker_builds
    assert traces(final, tmp_path, needles) == []


def test_the_layer_scan_finds_the_marker_ca_in_the_builder(marker_builds, tmp_path):
    builder, _, needles = marker_builds
    found = traces(builder, tmp_path, needles)
    assert any(hit.startswith("marker PEM") for hit in found), found
    assert any(hit.startswith("extra bundle") for hit in found), found


@pytest.fixture(scope="module")
def built_images(base_images) -> dict[str, str]:
    run("bash", "scripts/build-images.sh", timeout=3600)
    images = read_env(ROOT / ".build" / "images.env")
    return {var: ref for var, ref in images.items() if var != "BUILDER_IMAGE"}


def added_cas(base_images) -> list[bytes]:
    """The CAs the extra bundle (.build/ca/extra-ca.pem) adds to the Python base image's own."""
    extra = ROOT / ".build" / "ca" / "extra-ca.pem"
    if not extra.is_file():
        return []
    system = docker("run", "--rm", "--entrypoint", "cat", base_images["PYTHON_IMAGE"],
                    "/etc/ssl/certs/ca-certificates.crt").stdout.encode()  # fmt: skip
    known = set(certificates(system))
    return [pem for pem in certificates(extra.read_bytes()) if pem not in known]


def test_no_image_holds_a_ca_the_extra_bundle_adds(built_images, base_images, tmp_path):
    added = added_cas(base_images)
    if not added:
        pytest.skip("the extra bundle adds no CA to the base image's (no proxy CA here)")
    needles = {f"added CA {i} {kind}": n for i, pem in enumerate(added)
               for kind, n in needles_of(pem).items()}  # fmt: skip
    base_layers = {ref: layer_count(ref) for ref in set(base_images.values())}
    found = {}
    for var, image in sorted(built_images.items()):
        base = docker(
            "image",
            "inspect",
            "-f",
            '{{index .Config.Labels "org.opencontainers.image.base.name"}}',
            image,
        )
        skip = base_layers.get(base.stdout.strip(), 0)
        hits = traces(image, tmp_path, needles, skip_layers=skip)
        if hits:
            found[var] = hits[:5]
    assert found == {}


def tls_is_intercepted(host: str = "pypi.org") -> bool:
    """True when the public CAs (certifi) cannot verify PyPI: a TLS-inspecting proxy is there."""
    context = ssl.create_default_context(cafile=certifi.where())
    try:
        with socket.create_connection((host, 443), timeout=15) as sock:
            with context.wrap_socket(sock, server_hostname=host):
                return False
    except ssl.SSLCertVerificationError:
        return True


def test_the_builder_without_the_extra_ca_fails_tls_behind_a_proxy(base_images, tmp_path):
    if not tls_is_intercepted():
        pytest.skip("no TLS-inspecting proxy here: builds need no extra CA")
    context = make_context(tmp_path, extra_ca=None)
    tag = f"conveyor-test/builder:noca-{uuid.uuid4().hex[:8]}"
    try:
        out = build(context, "docker/builder/Dockerfile", tag, "--no-cache",
                    "--build-arg", f"PYTHON_IMAGE={base_images['PYTHON_IMAGE']}",
                    "--build-arg", f"UV_VERSION={uv_version()}", check=False)  # fmt: skip
    finally:
        docker("rmi", "-f", tag, check=False)
    assert out.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in out.stdout + out.stderr, (out.stdout + out.stderr)[-2000:]
