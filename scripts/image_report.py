"""Print one table of the project's images: size, size above the base image, layers, user,
HEALTHCHECK and OCI labels. Images come from .build/images.env (make images) and, for
reference, the base images from .build/base-images.env (make base-images).

    python scripts/image_report.py [--env .build/images.env] [--no-bases]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound

ROOT = Path(__file__).resolve().parent.parent
OCI = "org.opencontainers.image."
BASE_LABEL = OCI + "base.name"


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (missing file: nothing)."""
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def mb(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:.1f} MB"


def short(value: str, width: int = 24) -> str:
    """A label value cut to `width` characters (the table stays readable)."""
    return value if len(value) <= width else value[: width - 1] + "…"


def healthcheck(config: dict) -> str:
    test = (config.get("Healthcheck") or {}).get("Test") or []
    if not test:
        return "no"
    if test == ["NONE"]:
        return "none (disabled)"
    return "yes"


def row(client: docker.DockerClient, var: str, ref: str) -> dict[str, str]:
    try:
        image = client.images.get(ref)
    except ImageNotFound:
        return {"image": f"{var}={ref}", "size": "missing"}
    attrs = image.attrs
    config = attrs.get("Config") or {}
    labels = config.get("Labels") or {}
    layers = attrs.get("RootFS", {}).get("Layers") or []
    base_ref = labels.get(BASE_LABEL, "")
    added, added_layers = None, None
    if base_ref:
        try:
            base = client.images.get(base_ref).attrs
            added = attrs["Size"] - base["Size"]
            added_layers = len(layers) - len(base.get("RootFS", {}).get("Layers") or [])
        except ImageNotFound:
            pass
    oci = " ".join(
        f"{key.removeprefix(OCI)}={short(value)}"
        for key, value in sorted(labels.items())
        if key.startswith(OCI) and key != BASE_LABEL
    )
    return {
        "image": f"{var}={ref}",
        "size": mb(attrs.get("Size")),
        "above base": mb(added) if base_ref else "-",
        "base": base_ref or "-",
        "layers": f"{len(layers)}" + (f" (+{added_layers})" if added_layers is not None else ""),
        "user": config.get("User") or "root (unset)",
        "healthcheck": healthcheck(config),
        "OCI labels": oci or "-",
    }


def print_table(rows: list[dict[str, str]]) -> None:
    columns = [
        "image",
        "size",
        "above base",
        "base",
        "layers",
        "user",
        "healthcheck",
        "OCI labels",
    ]
    widths = {c: max(len(c), *(len(r.get(c, "")) for r in rows)) for c in columns}
    line = " | ".join(c.ljust(widths[c]) for c in columns)
    print(line)
    print("-+-".join("-" * widths[c] for c in columns))
    for r in rows:
        print(" | ".join(r.get(c, "").ljust(widths[c]) for c in columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", type=Path, default=ROOT / ".build" / "images.env")
    parser.add_argument("--bases", type=Path, default=ROOT / ".build" / "base-images.env")
    parser.add_argument("--no-bases", action="store_true", help="project images only")
    args = parser.parse_args(argv)

    images = read_env(args.env)
    if not images:
        print(f"image-report: no images listed in {args.env}: run `make images`", file=sys.stderr)
        return 1
    if not args.no_bases:
        images |= {k: v for k, v in read_env(args.bases).items() if v not in images.values()}
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        print(f"image-report: no Docker engine answers ({exc}): run `make engine`", file=sys.stderr)
        return 1
    print_table([row(client, var, ref) for var, ref in images.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
