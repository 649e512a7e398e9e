"""Fetch the model at container start-up (called by docker-entrypoint.sh), by MODEL_SOURCE:

- `baked` (default): nothing to fetch, the model is in MODEL_DIR (/app/model) already.
- `mlflow`: download MODEL_URI (default `models:/$MODEL_NAME@champion`) from the registry at
  MLFLOW_TRACKING_URI; the resolved registry version becomes MODEL_VERSION.
- `dvc`: `dvc pull` the model directory from the DVC remote DVC_REMOTE_URL (s3://bucket/path,
  endpoint from AWS_ENDPOINT_URL, keys from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), given its
  DVC hash (DVC_MODEL_MD5, e.g. `3f2a...d1.dir`) or a dvc.lock (DVC_LOCK_FILE, output
  DVC_MODEL_PATH=models/model).

Fetching needs the sklearn variant (SERVING_SKLEARN_IMAGE: mlflow, dvc, and sklearn to compile
the fetched model once into CACHE_DIR); the lean image serves baked models only.

Writes KEY=VALUE lines (MODEL_DIR, MODEL_VERSION, or MODEL_FETCH_ERROR with the one-line
reason) to the file given as argument; the entrypoint exports them and starts the server,
which stays up not-ready with that reason if the fetch failed. Always exits 0 once it has
written the file, so a bad registry or remote never becomes a crash loop.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

FETCH_ROOT = Path(os.environ.get("MODEL_FETCH_DIR", "/tmp/conveyor-model"))


class FetchError(RuntimeError):
    pass


def from_mlflow(env: dict[str, str]) -> dict[str, str]:
    name = env.get("MODEL_NAME") or "conveyor"
    uri = env.get("MODEL_URI") or f"models:/{name}@champion"
    if not env.get("MLFLOW_TRACKING_URI"):
        raise FetchError("MODEL_SOURCE=mlflow needs MLFLOW_TRACKING_URI")
    # MLflow's client retries a dead server for ~4 min by default: fail in seconds instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        import mlflow
        from mlflow import MlflowClient

        version = env.get("MODEL_VERSION", "")
        if uri.startswith("models:/"):
            ref = uri[len("models:/") :]
            if "@" in ref:
                reg_name, alias = ref.split("@", 1)
                mv = MlflowClient().get_model_version_by_alias(reg_name, alias)
                version, name = str(mv.version), reg_name
            elif "/" in ref:
                name, version = ref.split("/", 1)
        dest = FETCH_ROOT / "mlflow"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest))
    except Exception as exc:  # noqa: BLE001 - any client/server error is a fetch failure
        msg = " ".join(str(exc).split())[:400]
        raise FetchError(f"cannot fetch {uri} from {env['MLFLOW_TRACKING_URI']}: {msg}") from exc
    return {"MODEL_DIR": local, "MODEL_VERSION": version, "MODEL_NAME": name}


def _dvc(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        out = " ".join((proc.stderr or proc.stdout).split())[-400:]
        raise FetchError(f"`dvc {' '.join(args)}` failed: {out}")


def _md5_from_lock(lock_file: str, out_path: str) -> str:
    import yaml

    try:
        lock = yaml.safe_load(Path(lock_file).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FetchError(f"cannot read DVC_LOCK_FILE {lock_file}: {exc}") from exc
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == out_path and out.get("md5"):
                return str(out["md5"])
    raise FetchError(f"{lock_file} has no output {out_path} with an md5")


def from_dvc(env: dict[str, str]) -> dict[str, str]:
    remote = env.get("DVC_REMOTE_URL")
    if not remote:
        raise FetchError("MODEL_SOURCE=dvc needs DVC_REMOTE_URL (e.g. s3://dvc/conveyor)")
    md5 = env.get("DVC_MODEL_MD5")
    if not md5:
        lock = env.get("DVC_LOCK_FILE")
        if not lock:
            raise FetchError("MODEL_SOURCE=dvc needs DVC_MODEL_MD5 or DVC_LOCK_FILE")
        md5 = _md5_from_lock(lock, env.get("DVC_MODEL_PATH", "models/model"))
    if shutil.which("dvc") is None:
        raise FetchError("dvc is not installed in this image")
    ws = FETCH_ROOT / "dvc"
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    _dvc(["init", "--no-scm", "-q"], ws)
    _dvc(["config", "core.site_cache_dir", str(ws / ".dvc" / "site")], ws)
    _dvc(["remote", "add", "-d", "store", remote], ws)
    endpoint = env.get("DVC_REMOTE_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL")
    if endpoint and remote.startswith("s3://"):
        _dvc(["remote", "modify", "store", "endpointurl", endpoint], ws)
    (ws / "model.dvc").write_text(
        json.dumps({"outs": [{"md5": md5, "path": "model", "hash": "md5"}]})
    )
    _dvc(["pull", "-q", "model.dvc"], ws)
    if not (ws / "model" / "MLmodel").is_file():
        raise FetchError(f"dvc pull of {md5} gave no MLflow model (no MLmodel file)")
    return {"MODEL_DIR": str(ws / "model")}


def fetch(env: dict[str, str]) -> dict[str, str]:
    source = (env.get("MODEL_SOURCE") or "baked").strip().lower()
    if source in ("baked", "local", "dir"):
        return {}
    if source in ("mlflow", "dvc") and importlib.util.find_spec(source) is None:
        raise FetchError(
            f"MODEL_SOURCE={source} needs the sklearn variant of the serving image "
            f"(SERVING_SKLEARN_IMAGE): this lean image has no {source}"
        )
    if source == "mlflow":
        return from_mlflow(env)
    if source == "dvc":
        return from_dvc(env)
    raise FetchError(f"MODEL_SOURCE={source!r} must be baked, mlflow or dvc")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m serving.fetch OUTPUT_ENV_FILE", file=sys.stderr)
        return 2
    try:
        result = fetch(dict(os.environ))
        for key, value in result.items():
            print(f"fetch: {key}={value}", file=sys.stderr)
    except FetchError as exc:
        result = {"MODEL_FETCH_ERROR": str(exc)}
        print(f"fetch: FAILED: {exc}", file=sys.stderr)
    lines = [f"{k}={' '.join(str(v).split())}" for k, v in result.items() if v]
    Path(argv[0]).write_text("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
