"""Serving settings, read once from the environment into one immutable object.

A frozen dataclass rather than pydantic-settings: building a pydantic model class costs ~0.25 s
of import and class creation here, a quarter of the cold-start budget (1 s to the first
prediction), for a dozen integers and paths.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


def available_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may really use: affinity mask and cgroup CPU quota, not the host count."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota(root: str) -> float | None:
    # cgroup v2: "max 100000" or "150000 100000"
    try:
        with open(os.path.join(root, "cpu.max")) as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    # cgroup v1
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as fh:
            quota_us = int(fh.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as fh:
            period_us = int(fh.read())
        if quota_us > 0 and period_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


class SettingsError(ValueError):
    """A setting has a value the server cannot use."""


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"{name}={raw!r} must be a finite number >= 0")
    return value


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "on", "yes", "auto"}:
        return True
    if raw in {"0", "false", "off", "no"}:
        return False
    raise SettingsError(f"{name}={raw!r} must be true or false")


@dataclass(frozen=True)
class Settings:
    model_dir: str = "/app/model"
    compiled_dir: str = "/app/compiled"  # baked by serving/model.Dockerfile
    cache_dir: str = "/tmp/conveyor-serving"  # start-up compilations: never inside model_dir
    model_name: str = "conveyor"
    model_version: str = ""  # empty: taken from the model's metadata, else "unknown"
    host: str = "0.0.0.0"
    port: int = 8000
    workers: int = 1
    max_batch_size: int = 5000
    max_body_bytes: int = 4 * 1024 * 1024
    max_errors: int = 10  # errors listed in a 4xx body; the rest are counted as omitted
    header_timeout: float = 10.0  # a request's headers must arrive within this (else closed)
    body_timeout: float = 30.0  # and its body within this (else 408)
    max_connections: int = 1000  # per worker; more get 503
    drain_seconds: float = 2.0  # report not-ready this long before closing the listener
    graceful_timeout: float = 5.0  # then wait at most this long for in-flight requests
    fast_path: bool = True  # the compiled (ONNX) path when it matches sklearn
    reject_unknown_categories: bool = False  # 422 for a category the model never saw
    log_level: str = "info"
    fetch_error: str = ""  # set by the entrypoint when the model could not be fetched

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        settings = cls(
            model_dir=env.get("MODEL_DIR") or cls.model_dir,
            compiled_dir=env.get("COMPILED_DIR") or cls.compiled_dir,
            cache_dir=env.get("CACHE_DIR") or cls.cache_dir,
            model_name=env.get("MODEL_NAME") or cls.model_name,
            model_version=env.get("MODEL_VERSION", ""),
            host=env.get("HOST") or cls.host,
            port=_int(env, "PORT", cls.port, minimum=1),
            workers=_int(env, "WEB_CONCURRENCY", available_cpus(), minimum=1),
            max_batch_size=_int(env, "MAX_BATCH_SIZE", cls.max_batch_size, minimum=1),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", cls.max_body_bytes, minimum=1024),
            max_errors=_int(env, "MAX_ERRORS", cls.max_errors, minimum=1),
            header_timeout=_float(env, "HEADER_TIMEOUT", cls.header_timeout),
            body_timeout=_float(env, "BODY_TIMEOUT", cls.body_timeout),
            max_connections=_int(env, "MAX_CONNECTIONS", cls.max_connections, minimum=1),
            drain_seconds=_float(env, "SHUTDOWN_DRAIN_SECONDS", cls.drain_seconds),
            graceful_timeout=_float(env, "GRACEFUL_TIMEOUT", cls.graceful_timeout),
            fast_path=_bool(env, "FAST_PATH", True),
            reject_unknown_categories=_bool(env, "REJECT_UNKNOWN_CATEGORIES", False),
            log_level=(env.get("LOG_LEVEL") or cls.log_level).lower(),
            fetch_error=env.get("MODEL_FETCH_ERROR", ""),
        )
        model_dir = os.path.realpath(settings.model_dir)
        cache_dir = os.path.realpath(settings.cache_dir)
        if os.path.commonpath([model_dir, cache_dir]) == model_dir:
            raise SettingsError(
                f"CACHE_DIR={settings.cache_dir} is inside MODEL_DIR={settings.model_dir}: "
                "the model directory (a DVC output) is never written to"
            )
        return settings
