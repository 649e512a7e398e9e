"""Settings from the environment, and the worker count from the CPUs the container may use."""

from __future__ import annotations

import os

import pytest

from serving.settings import Settings, SettingsError, available_cpus

pytestmark = pytest.mark.unit


def test_defaults_and_overrides():
    s = Settings.from_env({})
    assert (s.model_dir, s.model_name, s.port) == ("/app/model", "conveyor", 8000)
    assert s.fast_path and s.max_batch_size == 5000
    assert s.workers == available_cpus()
    s = Settings.from_env(
        {"WEB_CONCURRENCY": "3", "MAX_BATCH_SIZE": "10", "FAST_PATH": "off", "MODEL_VERSION": "4"}
    )
    assert (s.workers, s.max_batch_size, s.fast_path, s.model_version) == (3, 10, False, "4")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WEB_CONCURRENCY": "two"}, "WEB_CONCURRENCY='two' is not an integer"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY=0 must be >= 1"),
        ({"GRACEFUL_TIMEOUT": "nan"}, "GRACEFUL_TIMEOUT='nan' must be a finite number >= 0"),
        ({"FAST_PATH": "maybe"}, "FAST_PATH='maybe' must be true or false"),
        ({"CACHE_DIR": "/app/model/cache"}, "CACHE_DIR=/app/model/cache is inside MODEL_DIR"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


def test_cpu_quota_from_cgroup_v2_and_v1(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("max 100000\n")
    assert available_cpus(str(v2)) == affinity
    (v2 / "cpu.max").write_text("50000 100000\n")  # --cpus 0.5
    assert available_cpus(str(v2)) == 1
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(str(tmp_path / "v1")) == 1
    assert available_cpus(str(tmp_path / "none")) == affinity
