"""The extra CA (a TLS-inspecting proxy's; by default the host's whole bundle) reaches the shared
builder image (docker/builder) and no final image:

- a marker CA appended to the extra bundle is in the builder image (the layer scan finds it),
  and in no layer of a small image of the test's own that takes a venv out of that builder the
  way every project Dockerfile does;
- every image `make images` built (.build/images.env) holds none of the CAs the extra bundle
  adds to the base image's own system bundle, in any layer above its base;
- behind a TLS-inspecting proxy, the builder without the extra CA fails TLS.

Layers are read where the engine keeps them (overlay2's layer directories, from `docker image
inspect`), each once however many images share it; `docker save` where the storage driver is
another.
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

from tests.docker.toolchain import DOCKER, ROOT, docker, run

pytestmark = pytest.mark.docker

# What the builder copies from the context (plus its Dockerfile).
CONTEXT_FILES = [".dockerignore", "docker/builder"]
BEGIN = b"-----BEGIN CERTIFICATE-----"
# The test's own final image: a venv made in the builder, copied out of it (as the project's
# Dockerfiles copy theirs).
FINAL_DOCKERFILE = """\
ARG BUILDER_IMAGE
ARG PYTHON_IMAGE
FROM ${BUILDER_IMAGE} AS builder
RUN uv venv /app/.venv
FROM ${PYTHON_IMAGE}
COPY --from=builder /app/.venv /app/.venv
USER 1000:1000
HEALTHCHECK NONE
"""


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
        cwd=context, timeout=600, check=check, env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )  # fmt: skip


def layer_dirs(image: str) -> list[Path] | None:
    """The overlay2 directories of the image's layers, bottom first; None for another driver."""
    data = json.loads(docker("image", "inspect", "-f", "{{json .GraphDriver}}", image).stdout)
    if data.get("Name") != "overlay2":
        return None
    lower = [d for d in (data["Data"].get("LowerDir") or "").split(":") if d]
    return [Path(d) for d in [*reversed(lower), data["Data"]["UpperDir"]]]


def files_in_dir(layer: Path):
    for root, _, names in os.walk(layer):
        for name in names:
            path = Path(root, name)
            if path.is_file() and not path.is_symlink():
                yield str(path.relative_to(layer)), path.read_bytes()


def files_in_saved_layers(image: str, tmp: Path, skip_layers: int):
    archive = tmp / f"{uuid.uuid4().hex}.tar"
    docker("save", "-o", archive, image, timeout=600)
    try:
        with tarfile.open(archive) as outer:
            manifest = json.load(outer.extractfile("manifest.json"))
            for layer in manifest[0]["Layers"][skip_layers:]:
                with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
                    for member in inner.getmembers():
                        if member.isfile():
                            yield layer, member.name, inner.extractfile(member).read()
    finally:
        archive.unlink(missing_ok=True)


class LayerScan:
    """Needles in the files of images' layers above their bases; each layer read once."""

    def __init__(self, needles: dict[str, bytes], tmp: Path):
        self.needles, self.tmp = needles, tmp
        self.found: dict[str, list[str]] = {}  # layer -> hits

    def _hits(self, layer: str, path: str, data: bytes) -> list[str]:
        return [f"{what} in {path} ({layer})" for what, n in self.needles.items() if n in data]

    def image(self, image: str, skip_layers: int = 0) -> list[str]:
        dirs = layer_dirs(image)
        if dirs is None:
            return [
                hit
                for layer, path, data in files_in_saved_layers(image, self.tmp, skip_layers)
                for hit in self._hits(layer, path, data)
            ]
        hits = []
        for layer in dirs[skip_layers:]:
            if str(layer) not in self.found:
                self.found[str(layer)] = [
                    hit
                    for path, data in files_in_dir(layer)
                    for hit in self._hits(layer.parent.name, path, data)
                ]
            hits += self.found[str(layer)]
        return hits


def traces(image: str, tmp: Path, needles: dict[str, bytes], skip_layers: int = 0) -> list[str]:
    return LayerScan(needles, tmp).image(image, skip_layers)


def layer_count(image: str) -> int:
    out = docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", image).stdout
    return len(json.loads(out))


@pytest.fixture(scope="module")
def marker_builds(base_images, tmp_path_factory):
    """The builder, with a marker CA in the extra bundle, and the test's own image FROM it."""
    pem, der = marker_ca()
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    bundle = (host_bundle.read_bytes() if host_bundle.is_file() else b"") + pem
    context = make_context(tmp_path_factory.mktemp("ca-context"), bundle)
    (context / "final.Dockerfile").write_text(FINAL_DOCKERFILE)
    tag = uuid.uuid4().hex[:8]
    builder, final = f"conveyor-test/builder:ca-{tag}", f"conveyor-test/final:ca-{tag}"
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
            "final.Dockerfile",
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
def built_images(project_images) -> dict[str, str]:
    return {var: ref for var, ref in project_images.items() if var != "BUILDER_IMAGE"}


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
    scan = LayerScan(needles, tmp_path)
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
        hits = scan.image(image, skip_layers=skip)
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
