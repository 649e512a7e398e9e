"""What the server sees, per feature, in the bins of the model's reference profile.

The profile (`reference_profile.json` next to the model, written by training: see
pipelines/profile.py for the format) fixes the bins; this module counts every served record into
them as Prometheus counters, so memory is bounded by features x bins whatever the traffic:

    conveyor_feature_values_total{model_version, profile, feature, bin}
    conveyor_traffic_records_total{model_version, profile}

Numeric values (booleans as 0/1) go to bin `bisect_right(edges, x)`; categorical ones to their
category's bin, unknown categories to `other`; nulls (and values of the wrong kind) to `null`.
Prometheus sums the counters over every worker and container and over a time window
(`increase(...[1h])`); the drift monitor compares those sums to the profile. `snapshot()` gives
one process's counts.

Self-contained on purpose (prometheus_client, numpy and the standard library only): the server
creates one `TrafficAggregator` per loaded model (`from_model_dir`) and counts each request's
validated input, column by column (`observe_columns`, serving.predictors.Batch.columns) or
record by record (`observe`).
"""

from __future__ import annotations

import json
import math
import weakref
from bisect import bisect_right
from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter

PROFILE_FILE = "reference_profile.json"
FORMAT = 1
SMALL_BATCH = 16  # up to this many records, value by value beats numpy's per-call overhead
FEATURE_COUNTER = "conveyor_feature_values_total"
RECORD_COUNTER = "conveyor_traffic_records_total"


_COUNTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _counters(registry: CollectorRegistry) -> tuple[Counter, Counter]:
    """The two counters of a registry, created on first use (a model reload in the same
    process reuses them: a registry refuses a second metric of the same name)."""
    if registry not in _COUNTERS:
        _COUNTERS[registry] = (
            Counter(
                FEATURE_COUNTER,
                "Served feature values by bin of the model's reference profile.",
                ["model_version", "profile", "feature", "bin"],
                registry=registry,
            ),
            Counter(
                RECORD_COUNTER,
                "Served records counted into the feature bins.",
                ["model_version", "profile"],
                registry=registry,
            ),
        )
    return _COUNTERS[registry]


class _Feature:
    """One feature's bins and their counter children (created once, incremented per request)."""

    __slots__ = ("name", "numeric", "edges", "index", "other", "null", "labels", "children")

    def __init__(self, name: str, spec: Mapping[str, Any]) -> None:
        self.name = name
        self.labels = list(spec["bins"])
        self.numeric = spec["kind"] == "numeric"
        self.edges = [float(e) for e in spec.get("edges", ())]
        self.index = {str(c): i for i, c in enumerate(spec.get("categories", ()))}
        self.null = len(self.labels) - 1
        self.other = self.null - 1  # categorical only
        if len(self.labels) != (len(self.edges) + 2 if self.numeric else len(self.index) + 2):
            raise ValueError(f"reference profile: feature {name!r} has inconsistent bins")
        self.children: list[Any] = []

    def bin_of(self, value: Any) -> int:
        if value is None:
            return self.null
        if self.numeric:
            if not isinstance(value, (int, float)) or (
                isinstance(value, float) and math.isnan(value)
            ):
                return self.null  # the request schema rules a wrong kind out; never a crash
            return bisect_right(self.edges, value)
        return self.index.get(value if isinstance(value, str) else str(value), self.other)

    def counts(self, values: list[Any]) -> dict[int, int]:
        """Bin index -> count for a batch: numpy for many numbers, a tally of distinct categories
        (both give what bin_of gives value by value)."""
        if len(values) <= SMALL_BATCH:
            return Tally(self.bin_of(v) for v in values)
        if self.numeric:
            try:
                numbers = np.array(values, dtype="float64")
            except (TypeError, ValueError):  # a wrong kind among them: value by value
                return Tally(self.bin_of(v) for v in values)
            null = np.isnan(numbers)
            found = np.bincount(
                np.searchsorted(self.edges, numbers[~null], side="right"), minlength=self.null
            )
            tally = {i: int(n) for i, n in enumerate(found.tolist()) if n}
            if null.any():
                tally[self.null] = int(null.sum())
            return tally
        try:
            distinct = Tally(values)
        except TypeError:  # unhashable values: value by value
            return Tally(self.bin_of(v) for v in values)
        tally: dict[int, int] = {}
        for value, n in distinct.items():
            i = self.bin_of(value)
            tally[i] = tally.get(i, 0) + n
        return tally


class TrafficAggregator:
    def __init__(
        self,
        profile: Mapping[str, Any],
        model_version: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if profile.get("format") != FORMAT or not isinstance(profile.get("features"), Mapping):
            raise ValueError(f"reference profile: expected format {FORMAT} with features")
        self.profile_id = str(profile["id"])
        self.model_version = str(model_version)
        self.features = [_Feature(name, spec) for name, spec in profile["features"].items()]
        values, records = self._metrics = _counters(registry or REGISTRY)
        # Every child exists from the start (at 0): Prometheus sees each series before its first
        # increase, so `increase()` over a window counts from the first record.
        for feature in self.features:
            feature.children = [
                values.labels(self.model_version, self.profile_id, feature.name, label)
                for label in feature.labels
            ]
        self.records = records.labels(self.model_version, self.profile_id)

    @classmethod
    def from_model_dir(
        cls, model_dir: str | Path, model_version: str, registry: CollectorRegistry | None = None
    ) -> TrafficAggregator | None:
        """The aggregator of the model in `model_dir`, or None if it has no profile (a model
        trained before profiles existed is served without drift counts)."""
        path = Path(model_dir) / PROFILE_FILE
        if not path.is_file():
            return None
        return cls(json.loads(path.read_text()), model_version, registry)

    def observe(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Count a request's records (a missing feature counts as null)."""
        batch = records if isinstance(records, list) else list(records)
        names = [feature.name for feature in self.features]
        self.observe_columns({n: [record.get(n) for record in batch] for n in names}, len(batch))

    def observe_columns(self, columns: Mapping[str, Sequence[Any]], size: int) -> None:
        """Count a batch of `size` records given as one list of values per column (a feature
        the batch has no column for counts as null in every record)."""
        if size <= 0:
            return
        for feature in self.features:
            values = columns.get(feature.name)
            if values is None:
                feature.children[feature.null].inc(size)
            elif size == 1:
                feature.children[feature.bin_of(values[0])].inc()
            else:
                for i, n in feature.counts(list(values)).items():
                    feature.children[i].inc(n)
        self.records.inc(size)

    def snapshot(self) -> dict[str, Any]:
        """This process's counts: {"profile", "model_version", "records", "features":
        {feature: {bin: count}}} (the monitor's file input; Prometheus is the stack's)."""
        mine = {"model_version": self.model_version, "profile": self.profile_id}
        values, records = self._metrics
        features: dict[str, dict[str, float]] = {f.name: {} for f in self.features}
        total = 0.0
        for metric, sink in ((values, features), (records, None)):
            for family in metric.collect():
                for sample in family.samples:
                    labels = sample.labels
                    if not sample.name.endswith("_total") or any(
                        labels.get(k) != v for k, v in mine.items()
                    ):
                        continue
                    if sink is None:
                        total = sample.value
                    elif labels["feature"] in sink:
                        sink[labels["feature"]][labels["bin"]] = sample.value
        return {**mine, "records": total, "features": features}
