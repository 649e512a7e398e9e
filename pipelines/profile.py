"""Reference profile of the training data, and the drift (PSI) of observed counts against it.

The profile is the contract between training, serving and the drift monitor. `train` writes it
as `reference_profile.json` next to the model (PROFILE_FILE); the serving server counts what it
sees in the same bins (serving/traffic.py); the monitor compares the two (pipelines/monitor.py).

    {"format": 1, "id": "<12 hex>", "rows": N,
     "features": {
       "<numeric>":     {"kind": "numeric", "edges": [e1, ..., ek],
                         "bins": ["b0", ..., "bk", "null"], "counts": [...]},
       "<categorical>": {"kind": "categorical", "categories": ["a", "b", ...],
                         "bins": ["c:a", "c:b", ..., "other", "null"], "counts": [...]}}}

Numeric bins: the training data's quantiles (`monitor.bins` of them, fewer where values repeat),
plus one bin below the training minimum and one above the maximum; a value x falls in bin
`bisect_right(edges, x)`, so bin i holds edges[i-1] <= x < edges[i].
Categorical bins: the `monitor.max_categories` most frequent categories (compared as text), then
`other` (rarer categories in training, unknown ones in traffic), then `null`. Every feature
counts its nulls. `id` hashes the bin definitions: counts are comparable only under equal ids.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.common import PipelineError

if TYPE_CHECKING:
    from pipelines.config import MonitorParams, Params

FORMAT = 1
PROFILE_FILE = "reference_profile.json"
NULL_BIN = "null"
OTHER_BIN = "other"
CATEGORY_PREFIX = "c:"


# ----------------------------------------------------------------------------- building
def _numeric_edges(values: np.ndarray, bins: int) -> list[float]:
    """The training minimum, the inner quantiles and just above the maximum: the first and last
    bins hold only values outside the training range (empty in training, telling in traffic)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    quantiles = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1], method="linear")
    top = np.nextafter(finite.max(), np.inf)
    return [float(e) for e in np.unique(np.concatenate([[finite.min()], quantiles, [top]]))]


def _categories(values: pd.Series, max_categories: int) -> list[str]:
    text = values.dropna().astype(str)
    counts = text.value_counts(sort=False)
    # Most frequent first, ties by name: the same data always gives the same profile.
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [name for name, _ in ranked[:max_categories]]


def feature_spec(kind: str, *, edges: Sequence[float] = (), categories: Sequence[str] = ()):
    """The bins of one feature (without counts)."""
    if kind == "numeric":
        labels = [f"b{i}" for i in range(len(edges) + 1)]
        return {"kind": kind, "edges": list(edges), "bins": [*labels, NULL_BIN]}
    labels = [CATEGORY_PREFIX + c for c in categories]
    return {"kind": kind, "categories": list(categories), "bins": [*labels, OTHER_BIN, NULL_BIN]}


def bin_counts(spec: Mapping[str, Any], values: Sequence[Any] | pd.Series) -> list[int]:
    """Counts of `values` in the bins of `spec` (nulls and unknown categories included)."""
    series = pd.Series(values, dtype=object) if not isinstance(values, pd.Series) else values
    n_bins = len(spec["bins"])
    if spec["kind"] == "numeric":
        numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64")
        null = np.isnan(numbers)
        idx = np.searchsorted(
            np.asarray(spec["edges"], dtype="float64"), numbers[~null], side="right"
        )
        counts = np.bincount(idx, minlength=n_bins - 1).tolist()
        return [*counts, int(null.sum())]
    index = {c: i for i, c in enumerate(spec["categories"])}
    other = len(spec["categories"])
    null = series.isna()
    idx = series[~null].astype(str).map(index).fillna(other).to_numpy(dtype="int64")
    return [*np.bincount(idx, minlength=other + 1).tolist(), int(null.sum())]


def profile_id(features: Mapping[str, Mapping[str, Any]]) -> str:
    definition = {
        name: {k: v for k, v in spec.items() if k != "counts"} for name, spec in features.items()
    }
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_profile(
    frame: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str], cfg: MonitorParams
) -> dict[str, Any]:
    """The reference profile of the features `numeric` and `categorical` of `frame`."""
    missing = [c for c in [*numeric, *categorical] if c not in frame]
    if missing:
        raise PipelineError(f"profile: feature column(s) missing: {', '.join(missing)}")
    features: dict[str, dict[str, Any]] = {}
    for name in numeric:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype="float64")
        features[name] = feature_spec("numeric", edges=_numeric_edges(values, cfg.bins))
    for name in categorical:
        features[name] = feature_spec(
            "categorical", categories=_categories(frame[name], cfg.max_categories)
        )
    for name, spec in features.items():
        spec["counts"] = bin_counts(spec, frame[name])
    return {"format": FORMAT, "id": profile_id(features), "rows": len(frame), "features": features}


def save_profile(profile: Mapping[str, Any], directory: Path) -> Path:
    path = Path(directory) / PROFILE_FILE
    path.write_text(json.dumps(profile, indent=1, sort_keys=True) + "\n")
    return path


def training_profile(features: pd.DataFrame, params: Params) -> dict[str, Any]:
    """What train stores beside the model: the schema's features at `monitor`'s resolution."""
    schema = params.schema
    return build_profile(
        features, schema.numeric_features, schema.categorical_features, params.monitor
    )


def log_profile(profile: Mapping[str, Any], model_id: str) -> None:
    """The profile among a logged model's files (the monitor reads it from the registry)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.MlflowClient().log_model_artifact(model_id, str(save_profile(profile, Path(tmp))))


def load_profile(path: Path) -> dict[str, Any]:
    """A profile file, checked for the fields the monitor and the server rely on."""
    try:
        profile = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PipelineError(f"reference profile {path} is unreadable: {exc}") from exc
    if profile.get("format") != FORMAT or not isinstance(profile.get("features"), dict):
        raise PipelineError(f"reference profile {path}: not a format-{FORMAT} profile")
    if profile_id(profile["features"]) != profile.get("id"):
        raise PipelineError(f"reference profile {path}: its id does not match its bins")
    return profile


# ----------------------------------------------------------------------------- drift
def psi(expected: Sequence[float], actual: Sequence[float], smoothing: float = 0.5) -> float:
    """Population stability index of `actual` counts against `expected` counts (same bins).

    sum((a_i - e_i) * ln(a_i / e_i)) over the bins' proportions. An empty bin on one side would
    make it infinite: both sides get `smoothing` pseudo-counts per bin first (additive
    smoothing), so a bin never seen in training but present in traffic weighs a lot, not inf.
    """
    e = np.asarray(expected, dtype="float64")
    a = np.asarray(actual, dtype="float64")
    if e.shape != a.shape or e.ndim != 1 or e.size < 2:
        raise ValueError(f"psi: need two count vectors of one length >= 2: {e.shape}, {a.shape}")
    if (e < 0).any() or (a < 0).any() or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi: counts must be non-negative with a positive total")
    p = (e + smoothing) / (e.sum() + smoothing * e.size)
    q = (a + smoothing) / (a.sum() + smoothing * a.size)
    return float(np.sum((q - p) * np.log(q / p)))


def drift(
    profile: Mapping[str, Any], observed: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """PSI per feature between the profile's counts and `observed` counts by bin label.

    `observed` maps feature -> {bin label: count} (serving/traffic.py's labels); a feature or
    bin without traffic counts 0. Labels the profile does not define are an error: the counts
    were made under other bins.
    """
    result: dict[str, float] = {}
    for name, spec in profile["features"].items():
        counts = observed.get(name) or {}
        unknown = set(counts) - set(spec["bins"])
        if unknown:
            raise PipelineError(
                f"drift: feature '{name}' has bins {sorted(unknown)} that the "
                f"reference profile {profile['id']} does not define"
            )
        actual = [float(counts.get(label, 0.0)) for label in spec["bins"]]
        if sum(actual) <= 0:
            continue
        result[name] = psi(spec["counts"], actual)
    return result


_METRIC_KEY = re.compile(r"[^\w\-./ ]")


def metric_key(feature: str) -> str:
    """An MLflow metric name for a feature (MLflow allows letters, digits, _-./ and space)."""
    return "psi/" + (_METRIC_KEY.sub("_", feature) or "_")
