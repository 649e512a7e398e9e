"""Stage `monitor`: input drift of the served model versions, recorded and published.

    python -m pipelines.monitor [--params params.yaml] [--window 15m | --since 2026-03-02T10:00Z]

1. Traffic: the counts the serving containers kept in their reference profile's bins
   (serving/traffic.py) over the last `monitor.window` (or `--window`, another span; or
   `--since`, e.g. only the traffic since a deploy: the `monitor` DAG's params), summed over
   every container by Prometheus (PROMETHEUS_URL), or one snapshot file (MONITOR_TRAFFIC_FILE,
   the aggregator's `snapshot()` as JSON, for runs without a stack).
2. Per model version with at least `monitor.min_samples` records: its reference profile from the
   registry (`reference_profile.json` beside the model), PSI per feature (pipelines/profile.py).
3. Recorded in MLflow: one run per model version in the experiment `<train.experiment>-drift`
   (metrics `psi/<feature>`, `psi_max`, `samples`, one step per check: the drift history of that
   version), tags `drift.*` on the registered model version, and a plot of PSI per feature over
   time (<model>-v<version>.png in MONITOR_PLOT_DIR, else reports/drift/; also an artifact of
   that run).
4. Published to Prometheus through the Pushgateway (PUSHGATEWAY_URL, optional):
   conveyor_feature_drift_psi{model_version, feature}, conveyor_drift_psi_threshold,
   conveyor_drift_samples{model_version}, conveyor_drift_check_timestamp_seconds.

The last stdout line is the JSON summary: `verdict` is `drift` (some version's PSI passed
`monitor.psi_threshold` on a feature), `ok`, or `no_traffic` (no version had enough records);
`drift_version` and `reason` say which and why (the DAG puts them in the asset event that asks
for a retrain).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines import tracking
from pipelines.common import PipelineError, run_cli
from pipelines.config import PROMETHEUS_RANGE
from pipelines.profile import PROFILE_FILE, drift, load_profile, metric_key

if TYPE_CHECKING:
    from pipelines.config import MonitorParams, Params

DRIFT_DIR = Path("reports/drift")
PUSH_JOB = "conveyor_monitor"
TAG_PREFIX = "conveyor.drift."


class MonitorSettings(BaseSettings):
    """Deployment wiring of the monitor, from the environment (read once)."""

    model_config = SettingsConfigDict(extra="ignore")

    prometheus_url: str | None = None  # PROMETHEUS_URL, e.g. http://prometheus:9090
    monitor_traffic_file: Path | None = None  # MONITOR_TRAFFIC_FILE: one snapshot instead
    pushgateway_url: str | None = None  # PUSHGATEWAY_URL, e.g. http://pushgateway:9091
    # MONITOR_PLOT_DIR: where the PNGs go; unset: reports/drift beside the params file (the DAG
    # reads the image's params.yaml and writes the plots to the workspace volume)
    monitor_plot_dir: Path | None = None

    def source(self) -> str:
        if bool(self.prometheus_url) == bool(self.monitor_traffic_file):
            raise PipelineError(
                "set exactly one of PROMETHEUS_URL (the stack's Prometheus) "
                "and MONITOR_TRAFFIC_FILE (a traffic snapshot file)"
            )
        return self.prometheus_url or str(self.monitor_traffic_file)


@dataclass
class Traffic:
    """Counts of one model version under one profile: {feature: {bin: count}}."""

    model_version: str
    profile_id: str
    records: float = 0.0
    features: dict[str, dict[str, float]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- traffic
def _query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise PipelineError(f"Prometheus at {base} is unusable: {exc}") from exc
    if body.get("status") != "success":
        raise PipelineError(f"Prometheus query failed: {body.get('error', body)}")
    return body["data"]["result"]


def traffic_from_prometheus(base: str, window: str) -> list[Traffic]:
    groups: dict[tuple[str, str], Traffic] = {}

    def group(labels: dict[str, str]) -> Traffic:
        key = (labels.get("model_version", ""), labels.get("profile", ""))
        return groups.setdefault(key, Traffic(*key))

    for row in _query(
        base,
        f"sum by (model_version, profile) (increase(conveyor_traffic_records_total[{window}]))",
    ):
        group(row["metric"]).records = float(row["value"][1])
    for row in _query(
        base,
        "sum by (model_version, profile, feature, bin) "
        f"(increase(conveyor_feature_values_total[{window}]))",
    ):
        labels = row["metric"]
        counts = group(labels).features.setdefault(labels["feature"], {})
        counts[labels["bin"]] = float(row["value"][1])
    return list(groups.values())


def served_versions(base: str) -> set[str]:
    """The model versions a serving container exports `conveyor_model_info` for now (a replaced
    container's series go stale within minutes): only their drift can ask for a retrain, while
    a retired version's traffic of the last window is still recorded."""
    return {
        row["metric"].get("version", "")
        for row in _query(base, "count by (version) (conveyor_model_info)")
    }


def traffic_from_file(path: Path) -> list[Traffic]:
    try:
        snap = json.loads(Path(path).read_text())
        return [
            Traffic(
                str(snap["model_version"]),
                str(snap["profile"]),
                float(snap["records"]),
                snap["features"],
            )
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"traffic snapshot {path} is unreadable: {exc}") from exc


# ----------------------------------------------------------------------------- MLflow
def reference_profile(client, name: str, version: str) -> dict[str, Any]:
    """The profile stored beside the registered model version's files (its logged model's
    artifact location; a version registered from a run path: the version's download URI)."""
    import mlflow

    model_version = client.get_model_version(name, version)
    model_id = getattr(model_version, "model_id", None)
    location = (
        client.get_logged_model(model_id).artifact_location
        if model_id
        else client.get_model_version_download_uri(name, version)
    )
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one line per error, no bars
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location.rstrip('/')}/{PROFILE_FILE}", dst_path=tmp
            )
        except Exception as exc:  # no such artifact: a model trained before profiles existed
            raise PipelineError(
                f"model {name} v{version} has no {PROFILE_FILE}: {str(exc).splitlines()[0]}"
            ) from exc
        return load_profile(Path(path))


def drift_run(client, experiment_id: str, name: str, version: str) -> str:
    """The MLflow run holding the drift history of one model version (created once)."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_PREFIX}model_name` = '{name}' and "
        f"tags.`{TAG_PREFIX}model_version` = '{version}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"drift {name} v{version}",
        tags={f"{TAG_PREFIX}model_name": name, f"{TAG_PREFIX}model_version": version},
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def record(
    client,
    run_id: str,
    name: str,
    version: str,
    scores: dict[str, float],
    samples: float,
    verdict: str,
    checked: float,
) -> None:
    from mlflow.entities import Metric

    step, stamp = int(checked), int(checked * 1000)
    metrics = [Metric(metric_key(f), v, stamp, step) for f, v in scores.items()]
    metrics += [
        Metric("psi_max", max(scores.values()), stamp, step),
        Metric("samples", samples, stamp, step),
    ]
    client.log_batch(run_id, metrics=metrics)
    worst = max(scores, key=scores.get)
    for key, value in {
        "psi_max": f"{scores[worst]:.4f}",
        "feature": worst,
        "verdict": verdict,
        "checked_at": dt.datetime.fromtimestamp(checked, dt.UTC).isoformat(),
        "mlflow_run_id": run_id,
    }.items():
        client.set_model_version_tag(name, version, f"drift.{key}", value)


def plot_history(
    client, run_id: str, features: list[str], threshold: float, title: str, path: Path
) -> Path:
    """PSI per feature over time, from the run's metric history, with the threshold line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # one colour per feature up to 20
    for feature in features:
        history = sorted(
            client.get_metric_history(run_id, metric_key(feature)), key=lambda m: m.step
        )
        times = [dt.datetime.fromtimestamp(m.step, dt.UTC) for m in history]
        ax.plot(times, [m.value for m in history], marker="o", markersize=3, label=feature)
    ax.axhline(threshold, color="red", linestyle="--", label=f"threshold {threshold}")
    ax.set(title=title, xlabel="check (UTC)", ylabel="PSI vs reference profile")
    ax.legend(loc="upper left", fontsize="small", ncol=2)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- Prometheus
def push(
    url: str, name: str, results: list[dict[str, Any]], threshold: float, checked: float
) -> None:
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

    registry = CollectorRegistry()
    psi = Gauge(
        "conveyor_feature_drift_psi",
        "PSI of served traffic vs the reference profile.",
        ["model_version", "feature"],
        registry=registry,
    )
    samples = Gauge(
        "conveyor_drift_samples",
        "Served records the last drift check compared.",
        ["model_version"],
        registry=registry,
    )
    Gauge(
        "conveyor_drift_psi_threshold",
        "PSI above which the monitor reports drift.",
        registry=registry,
    ).set(threshold)
    Gauge(
        "conveyor_drift_check_timestamp_seconds",
        "When the last drift check ran.",
        registry=registry,
    ).set(checked)
    for result in results:
        samples.labels(result["model_version"]).set(result["samples"])
        for feature, value in result["psi"].items():
            psi.labels(result["model_version"], feature).set(value)
    try:  # replaces this model's group: versions no longer served drop out
        push_to_gateway(
            url, job=PUSH_JOB, grouping_key={"model_name": name}, registry=registry, timeout=30
        )
    except (OSError, urllib.error.URLError) as exc:
        raise PipelineError(f"Pushgateway at {url} is unusable: {exc}") from exc


# ----------------------------------------------------------------------------- stage
def _reason(name: str, result: dict[str, Any], cfg: MonitorParams) -> str:
    over = sorted(((v, f) for f, v in result["psi"].items() if v > cfg.psi_threshold), reverse=True)
    listed = ", ".join(f"{f} {v:.3f}" for v, f in over[:5])
    return (
        f"input drift on model {name} v{result['model_version']}: PSI {listed} > "
        f"{cfg.psi_threshold} over the last {cfg.window} ({result['samples']:.0f} records)"
    )


def monitor(
    params: Params, root: Path, window: str = "", since: dt.datetime | None = None
) -> dict[str, Any]:
    import mlflow

    if since is not None:  # the span from then to now, as the check runs (not as it was asked)
        seconds = math.ceil(time.time() - since.timestamp())
        if seconds < 1:
            raise PipelineError(f"--since {since.isoformat()} is not in the past")
        window = f"{seconds}s"
    if window:
        params.monitor.window = window
    cfg = params.monitor
    settings = MonitorSettings()
    source = settings.source()
    name = params.model_name()
    checked = time.time()
    plot_dir = settings.monitor_plot_dir or root / DRIFT_DIR
    if settings.prometheus_url:
        groups = traffic_from_prometheus(source, cfg.window)
        serving = served_versions(source)
    else:
        groups = traffic_from_file(Path(source))
        serving = {g.model_version for g in groups}

    experiment_id = tracking.configure(root, f"{params.train.experiment}-drift")
    client = mlflow.MlflowClient()
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for group in sorted(groups, key=lambda g: g.model_version):
        if group.records < cfg.min_samples:
            skipped.append({"model_version": group.model_version, "samples": group.records})
            continue
        profile = reference_profile(client, name, group.model_version)
        if profile["id"] != group.profile_id:
            raise PipelineError(
                f"model {name} v{group.model_version}: traffic was counted under "
                f"profile {group.profile_id}, the registry holds {profile['id']}"
            )
        scores = drift(profile, group.features)
        if not scores:  # records counted, but no feature of this profile among them
            skipped.append({"model_version": group.model_version, "samples": group.records})
            continue
        verdict = "drift" if max(scores.values()) > cfg.psi_threshold else "ok"
        run_id = drift_run(client, experiment_id, name, group.model_version)
        record(client, run_id, name, group.model_version, scores, group.records, verdict, checked)
        plot = plot_history(
            client,
            run_id,
            sorted(scores),
            cfg.psi_threshold,
            f"Input drift of {name} v{group.model_version}",
            plot_dir / f"{name}-v{group.model_version}.png",
        )
        client.log_artifact(run_id, str(plot))
        worst = max(scores, key=scores.get)
        results.append(
            {
                "model_version": group.model_version,
                "samples": group.records,
                "verdict": verdict,
                "psi": scores,
                "max_feature": worst,
                "max_psi": scores[worst],
                "mlflow_run_id": run_id,
                "plot": str(plot),
                "serving": group.model_version in serving,
            }
        )
    if settings.pushgateway_url:
        # The alerting metrics: served versions only (InputDrift is about what serves now).
        serving_now = [r for r in results if r["serving"]]
        push(settings.pushgateway_url, name, serving_now, cfg.psi_threshold, checked)

    drifting = [r for r in results if r["verdict"] == "drift" and r["serving"]]
    newest = (
        max(drifting, key=lambda r: int(r["model_version"]) if r["model_version"].isdigit() else -1)
        if drifting
        else None
    )
    if newest is not None:
        verdict, reason = "drift", _reason(name, newest, cfg)
    elif results:
        verdict = "ok"
        reason = "; ".join(
            f"v{r['model_version']}: max PSI {r['max_psi']:.3f} ({r['max_feature']})"
            f" <= {cfg.psi_threshold}"
            for r in results
        )
    else:
        verdict = "no_traffic"
        reason = f"no model version had {cfg.min_samples} served records in the last {cfg.window}"
    return {
        "stage": "monitor",
        "model_name": name,
        "verdict": verdict,
        "reason": reason,
        "drift_version": newest["model_version"] if newest else None,
        "threshold": cfg.psi_threshold,
        "window": cfg.window,
        "checked_at": dt.datetime.fromtimestamp(checked, dt.UTC).isoformat(),
        "versions": results,
        "skipped": skipped,
        "pushed": bool(settings.pushgateway_url),
    }


def main(argv: list[str] | None = None) -> int:
    def prometheus_range(text: str) -> str:
        if text and not re.fullmatch(PROMETHEUS_RANGE, text):
            raise argparse.ArgumentTypeError(f"{text!r} is not a span such as 90s, 15m or 1h")
        return text

    def instant(text: str) -> dt.datetime | None:
        try:
            when = dt.datetime.fromisoformat(text) if text else None
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
        return when.replace(tzinfo=when.tzinfo or dt.UTC) if when else None

    def options(parser: argparse.ArgumentParser) -> None:
        span = parser.add_mutually_exclusive_group()
        span.add_argument(
            "--window",
            type=prometheus_range,
            default="",
            help="check the traffic of this span, e.g. 15m (default: monitor.window)",
        )
        span.add_argument(
            "--since",
            type=instant,
            default=None,
            help="check the traffic since this time (ISO 8601; UTC unless it says otherwise)",
        )

    return run_cli("monitor", monitor, argv, doc=__doc__.splitlines()[0], options=options)


if __name__ == "__main__":
    raise SystemExit(main())
