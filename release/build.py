"""Build the serving image with the registered model baked in (the DAG's `build_serving_image`).

    python -m release.build [--workspace /workspace] [--base-image IMAGE]
                                            [--repository conveyor/serving-model] [--image TAG]

Reads `reports/registration.json` (model name, version, MLflow run id) and the model directory
`models/model/` (its MLmodel `metadata` holds the data version and git commit) from the
workspace, and builds `<repository>:<model name>-v<version>` FROM the serving image
($SERVING_IMAGE) through the Docker API (docker-py, classic builder; DOCKER_HOST may point at a
socket proxy) with the serving part's own recipe, serving/model.Dockerfile (`--dockerfile`;
the DAG mounts it read-only from the checkout). The tag is the model version, the labels carry
the lineage. Idempotent: an image with that tag whose run-id label matches is reused.

`--image TAG` skips the build and hands an existing image on (rollback to an earlier model's
image, or a hotfix image): it must exist locally.

The last stdout line is one JSON object (DockerOperator XCom): image, image_id, model_name,
model_version, run_id, reused.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipelines.common import MODEL_DIR, REGISTRATION_FILE, PipelineError

DEFAULT_REPOSITORY = "conveyor/serving-model"
DEFAULT_DOCKERFILE = "serving/model.Dockerfile"

# Label keys: OCI ones where a standard exists, io.conveyor.* for the model lineage.
LABEL_MODEL_NAME = "io.conveyor.model.name"
LABEL_MODEL_VERSION = "io.conveyor.model.version"
LABEL_RUN_ID = "io.conveyor.model.run_id"
LABEL_DATA_VERSION = "io.conveyor.data.version"
LABEL_GIT_COMMIT = "org.opencontainers.image.revision"
LABEL_BASE_IMAGE = "org.opencontainers.image.base.name"
LABEL_INFERENCE_PATH = "io.conveyor.serving.inference_path"
CONVERT_STAGE = "convert"
SPEC_PATH = "/tmp/compiled/serving.json"  # where the convert stage writes serving.convert's spec


def docker_client():
    """A docker-py client from DOCKER_HOST (the socket proxy in the stack)."""
    import docker

    try:
        client = docker.from_env(timeout=int(os.environ.get("DOCKER_CLIENT_TIMEOUT", "300")))
        client.ping()
    except docker.errors.DockerException as exc:
        raise PipelineError(
            f"Docker API not reachable at {os.environ.get('DOCKER_HOST', 'the default socket')}: "
            f"{exc}"
        ) from exc
    return client


def read_release(workspace: Path) -> dict[str, Any]:
    """Model name, version, run id and lineage of the registered model in the workspace."""
    reg_path = workspace / REGISTRATION_FILE
    try:
        registration = json.loads(reg_path.read_text())
    except OSError as exc:
        raise PipelineError(f"no registration report at {reg_path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise PipelineError(f"registration report {reg_path} is not JSON: {exc}") from exc
    missing = [k for k in ("model_name", "version", "run_id") if not registration.get(k)]
    if missing:
        raise PipelineError(f"registration report {reg_path} lacks {', '.join(missing)}")
    mlmodel = workspace / MODEL_DIR / "MLmodel"
    try:
        metadata = (yaml.safe_load(mlmodel.read_text()) or {}).get("metadata") or {}
    except OSError as exc:
        raise PipelineError(f"no model at {mlmodel.parent}: {exc.strerror}") from exc
    return {
        "model_name": str(registration["model_name"]),
        "model_version": str(registration["version"]),
        "run_id": str(registration["run_id"]),
        "data_version": str(metadata.get("data_version") or registration.get("data_version") or ""),
        "git_commit": str(metadata.get("git_commit") or registration.get("git_commit") or ""),
    }


def image_tag(repository: str, release: dict[str, Any]) -> str:
    return f"{repository}:{release['model_name']}-v{release['model_version']}"


def build_context(dockerfile: Path, model_dir: Path) -> io.BytesIO:
    """A tar build context: the Dockerfile and the model directory (world-readable files)."""
    buf = io.BytesIO()
    try:
        data = dockerfile.read_bytes()
    except OSError as exc:
        msg = f"cannot read the model Dockerfile {dockerfile}: {exc.strerror}"
        raise PipelineError(msg) from exc
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))

        def normalise(ti: tarfile.TarInfo) -> tarfile.TarInfo:
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mode = 0o755 if ti.isdir() else 0o644
            return ti

        tar.add(model_dir, arcname="model", filter=normalise)
    buf.seek(0)
    return buf


def _build(
    client,
    context: io.BytesIO,
    tag: str,
    buildargs: dict[str, str],
    labels: dict[str, str] | None = None,
    target: str | None = None,
) -> str | None:
    """One classic-builder build; its log to stderr; the image id."""
    context.seek(0)
    image_id = None
    stream = client.api.build(
        fileobj=context,
        custom_context=True,
        tag=tag,
        buildargs=buildargs,
        labels=labels,
        target=target,
        pull=False,
        rm=True,
        forcerm=True,
        decode=True,
    )
    for chunk in stream:
        if "error" in chunk:
            raise PipelineError(f"image build failed: {chunk['error'].strip()}")
        if chunk.get("stream", "").strip():
            print(chunk["stream"].rstrip(), file=sys.stderr)
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    return image_id


def conversion_result(client, image: str) -> dict[str, Any]:
    """serving.convert's spec from the convert stage's image, via a container's output."""
    import docker

    container = None
    try:
        # not containers.run(remove=True): its logs can come back cut short
        container = client.containers.create(image, ["cat", SPEC_PATH], network_disabled=True)
        container.start()
        status = container.wait(timeout=120)
        out = container.logs(stdout=True, stderr=False)
        if status.get("StatusCode") != 0:
            raise PipelineError(f"no conversion result in {image}: {out[-300:]!r}")
        return json.loads(out)
    except (docker.errors.DockerException, ValueError) as exc:
        raise PipelineError(f"cannot read the conversion result from {image}: {exc}") from exc
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except docker.errors.DockerException:
                pass


def build(
    client, base_image: str, sklearn_image: str, repository: str, workspace: Path, dockerfile: Path
) -> dict[str, Any]:
    import docker

    release = read_release(workspace)
    tag = image_tag(repository, release)
    try:
        existing = client.images.get(tag)
    except docker.errors.ImageNotFound:
        existing = None
    if existing is not None and existing.labels.get(LABEL_RUN_ID) == release["run_id"]:
        print(
            f"build_serving_image: {tag} already holds run {release['run_id']}: reused",
            file=sys.stderr,
        )
        path = existing.labels.get(LABEL_INFERENCE_PATH, "")
        return {
            **release,
            "image": tag,
            "image_id": existing.id,
            "reused": True,
            "inference_path": path,
            "inference_note": "",
            "variant_image": "",
        }
    for image, var in ((base_image, "SERVING_IMAGE"), (sklearn_image, "SERVING_SKLEARN_IMAGE")):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            msg = f"serving base image {image} ({var}) is not present (run make images)"
            raise PipelineError(msg) from None

    context = build_context(dockerfile, workspace / MODEL_DIR)
    args = {
        "SERVING_SKLEARN_IMAGE": sklearn_image,
        "MODEL_NAME": release["model_name"],
        "MODEL_VERSION": release["model_version"],
    }
    convert_tag = f"{tag}-convert"
    print(
        f"build_serving_image: compiling the model (stage {CONVERT_STAGE} FROM {sklearn_image})",
        file=sys.stderr,
    )
    _build(
        client,
        context,
        convert_tag,
        {**args, "SERVING_RUNTIME_IMAGE": sklearn_image},
        target=CONVERT_STAGE,
    )
    try:
        spec = conversion_result(client, convert_tag)
        path = str(spec.get("path"))
        variant = base_image if path == "onnx" else sklearn_image
        print(
            f"build_serving_image: inference path {path} ({spec.get('note')}): "
            f"building {tag} FROM {variant}",
            file=sys.stderr,
        )
        labels = {
            LABEL_MODEL_NAME: release["model_name"],
            LABEL_MODEL_VERSION: release["model_version"],
            LABEL_RUN_ID: release["run_id"],
            LABEL_DATA_VERSION: release["data_version"],
            LABEL_GIT_COMMIT: release["git_commit"],
            LABEL_BASE_IMAGE: variant,
            LABEL_INFERENCE_PATH: path,
            "org.opencontainers.image.version": release["model_version"],
        }
        image_id = _build(client, context, tag, {**args, "SERVING_RUNTIME_IMAGE": variant}, labels)
    finally:
        try:
            client.images.remove(convert_tag, noprune=False)
        except docker.errors.DockerException:
            pass
    image = client.images.get(tag)
    return {
        **release,
        "image": tag,
        "image_id": image_id or image.id,
        "reused": False,
        "inference_path": path,
        "inference_note": str(spec.get("note", "")),
        "variant_image": variant,
    }


def use_existing(client, tag: str) -> dict[str, Any]:
    """Hand an explicitly chosen image on to deploy, with the lineage its labels carry."""
    import docker

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        raise PipelineError(f"image {tag} does not exist on this engine") from None
    labels = image.labels or {}
    return {
        "image": tag,
        "image_id": image.id,
        "model_name": labels.get(LABEL_MODEL_NAME, ""),
        "model_version": labels.get(LABEL_MODEL_VERSION, ""),
        "run_id": labels.get(LABEL_RUN_ID, ""),
        "data_version": labels.get(LABEL_DATA_VERSION, ""),
        "git_commit": labels.get(LABEL_GIT_COMMIT, ""),
        "reused": True,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m release.build", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workspace", default=".", type=Path)
    parser.add_argument(
        "--base-image",
        default=os.environ.get("SERVING_IMAGE", ""),
        help="the lean serving image (compiled path)",
    )
    parser.add_argument(
        "--sklearn-image",
        default=os.environ.get("SERVING_SKLEARN_IMAGE", ""),
        help="the sklearn variant: compiles, and serves what fails the check",
    )
    parser.add_argument("--repository", default=DEFAULT_REPOSITORY)
    parser.add_argument("--dockerfile", type=Path, default=Path(DEFAULT_DOCKERFILE))
    parser.add_argument("--image", default="", help="use this existing image, build nothing")
    args = parser.parse_args(argv)

    def run() -> dict[str, Any]:
        client = docker_client()
        if args.image:
            return use_existing(client, args.image)
        if not args.base_image:
            raise PipelineError("no serving base image: set SERVING_IMAGE or --base-image")
        if not args.sklearn_image:
            raise PipelineError(
                "no sklearn serving image: set SERVING_SKLEARN_IMAGE or --sklearn-image"
            )
        return build(
            client,
            args.base_image,
            args.sklearn_image,
            args.repository,
            args.workspace.resolve(),
            args.dockerfile,
        )

    return report("build_serving_image: error", run)


def report(prefix: str, run: Callable[[], dict[str, Any]]) -> int:
    """Run a step: its JSON summary as the last stdout line (XCom), or `<prefix>: <reason>` on
    stderr and the error's exit code."""
    try:
        summary = run()
    except PipelineError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
