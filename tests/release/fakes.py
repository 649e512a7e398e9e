"""Helpers of the release tests: small stand-in serving images (tests/release/fake_serving)
with the serving image's HTTP contract."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from release.build import LABEL_MODEL_NAME, LABEL_MODEL_VERSION

ROOT = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).parent / "fake_serving" / "server.py"


def env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().split() if "=" in line)


def stand_in(version: str) -> str:
    """The model version a stand-in image answers with: never one the registry could hold (the
    DAG's deploys on the same Swarm serve registered versions 1, 2, ...)."""
    return f"stand-in-{version}"


def build_fake(client, tag: str, version: str, ready: bool) -> str:
    """A stand-in serving image answering with `stand_in(version)`; never ready when `ready` is
    false.
    Its HEALTHCHECK probes /ready like the serving image's, on a short period; the start period
    leaves a loaded 2-core machine time to start Python twice (the server and the probe): a
    2 s one had a ready v2 replica fail its update in the CI run of 2026-12-07."""
    base = env_file(ROOT / ".build/base-images.env")["PYTHON_IMAGE"]
    probe = (
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2)"
    )
    dockerfile = (
        f"FROM {base}\nCOPY server.py /srv/server.py\n"
        f"ENV MODEL_VERSION={stand_in(version)} READY={'1' if ready else '0'}\n"
        "USER 1000\nEXPOSE 8000\n"
        "HEALTHCHECK --interval=2s --timeout=5s --start-period=20s --retries=3 "
        f'CMD ["python", "-c", "{probe}"]\n'
        'CMD ["python", "-u", "/srv/server.py"]\n'
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile.encode()), ("server.py", FAKE.read_bytes())):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    client.images.build(
        fileobj=buf,
        custom_context=True,
        tag=tag,
        pull=False,
        rm=True,
        labels={
            LABEL_MODEL_VERSION: stand_in(version),
            LABEL_MODEL_NAME: "fake",
            "io.conveyor.test": "release",
        },
    )
    return tag
