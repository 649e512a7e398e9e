"""Serving settings, read once from the environment into one immutable object."""

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


@dataclass(frozen=True)
class Settings:
    model_dir: str = "/app/model"
    model_name: str = "conveyor"
    model_version: str = ""  # empty: taken from the model's metadata, else "unknown"
    host: str = "0.0.0.0"
    port: int = 8000
    workers: int = 1
    max_batch_size: int = 5000
    max_body_bytes: int = 4 * 1024 * 1024
    drain_seconds: float = 2.0  # report not-ready this long before closing the listener
    graceful_timeout: float = 5.0  # then wait at most this long for in-flight requests
    fast_path: bool = True  # compiled numpy predictor when it matches sklearn exactly
    log_level: str = "info"
    fetch_error: str = ""  # set by the entrypoint when the model could not be fetched

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        fast = env.get("FAST_PATH", "auto").strip().lower()
        if fast not in {"auto", "on", "off", "true", "false", "1", "0"}:
            raise SettingsError(f"FAST_PATH={fast!r} must be auto or off")
        return cls(
            model_dir=env.get("MODEL_DIR", cls.model_dir) or cls.model_dir,
            model_name=env.get("MODEL_NAME", cls.model_name) or cls.model_name,
            model_version=env.get("MODEL_VERSION", ""),
            host=env.get("HOST", cls.host) or cls.host,
            port=_int(env, "PORT", cls.port, minimum=1),
            workers=_int(env, "WEB_CONCURRENCY", available_cpus(), minimum=1),
            max_batch_size=_int(env, "MAX_BATCH_SIZE", cls.max_batch_size, minimum=1),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", cls.max_body_bytes, minimum=1024),
            drain_seconds=_float(env, "SHUTDOWN_DRAIN_SECONDS", cls.drain_seconds),
            graceful_timeout=_float(env, "GRACEFUL_TIMEOUT", cls.graceful_timeout),
            fast_path=fast in {"auto", "on", "true", "1"},
            log_level=(env.get("LOG_LEVEL", cls.log_level) or cls.log_level).lower(),
            fetch_error=env.get("MODEL_FETCH_ERROR", ""),
        )
