"""The typed model of params.yaml: every ML knob, validated once and passed to each stage.

The model has no defaults: params.yaml sets every key, so no stage can disagree with the file.
`run_cli` (pipelines/common.py) loads and validates it; `python -m pipelines.params --set`
validates the edited file the same way. A wrong key, a missing key or a value of the wrong
type is one line naming the key (exit code 2).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    model_validator,
)

from pipelines.common import PipelineError, fingerprint

Task = Literal["classification", "regression"]
ClassificationMetric = Literal["accuracy", "f1_macro", "f1_weighted", "roc_auc", "log_loss"]
RegressionMetric = Literal["rmse", "mae", "r2"]


PROMETHEUS_RANGE = r"^[1-9][0-9]*[smhd]$"  # e.g. 90s, 15m, 1h


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DemoParams(Section):
    seed: int
    rows: int = Field(gt=0)


class IngestParams(Section):
    source: str = Field(min_length=1)
    date: dt.date
    demo: DemoParams


class SchemaParams(Section):
    target: str = Field(min_length=1)
    task: Task | None
    max_classes: int = Field(ge=2)
    id_column: str | None
    date_column: str | None
    numeric_features: list[str]
    categorical_features: list[str]
    drop_columns: list[str]

    @property
    def features(self) -> list[str]:
        return [*self.numeric_features, *self.categorical_features]

    @property
    def stored_columns(self) -> list[str]:
        """The columns a validated batch keeps: ids, date, target, features."""
        roles = [self.id_column, self.date_column, self.target, *self.features]
        return [c for c in roles if c]

    def fingerprint(self) -> str:
        """Names the dataset folder: batches of another schema never share it (see data.py)."""
        spec = {
            "target": self.target,
            "task": self.task,
            "id_column": self.id_column,
            "date_column": self.date_column,
            "numeric_features": sorted(self.numeric_features),
            "categorical_features": sorted(self.categorical_features),
        }
        return fingerprint(spec)

    @model_validator(mode="after")
    def _one_role_per_column(self) -> SchemaParams:
        if not self.features:
            raise ValueError("schema lists no numeric_features and no categorical_features")
        roles: dict[str, str] = {}
        named = [
            ("target", [self.target]),
            ("id_column", [self.id_column] if self.id_column else []),
            ("date_column", [self.date_column] if self.date_column else []),
            ("numeric_features", self.numeric_features),
            ("categorical_features", self.categorical_features),
            ("drop_columns", self.drop_columns),
        ]
        for role, columns in named:
            for column in columns:
                if column in roles:
                    raise ValueError(
                        f"column '{column}' is in schema.{roles[column]} and schema.{role}"
                    )
                roles[column] = role
        return self


class ValidationParams(Section):
    min_rows: int = Field(ge=1)
    max_null_fraction: float = Field(ge=0, le=1)
    min_classes: int = Field(ge=1)
    ranges: dict[str, tuple[float, float]]

    @model_validator(mode="after")
    def _ordered_ranges(self) -> ValidationParams:
        for column, (low, high) in self.ranges.items():
            if low > high:
                raise ValueError(f"validation.ranges.{column}: min {low} is above max {high}")
        return self


class SplitParams(Section):
    holdout_fraction: float = Field(gt=0, lt=1)
    random_state: int


@dataclass(frozen=True)
class Window:
    """`train.window`: the most recent `size` days or rows of the dataset, or all of it."""

    unit: Literal["all", "days", "rows"]
    size: int | None  # a whole number above 0; None for `all`

    def __str__(self) -> str:
        if self.unit == "all":
            return "all"
        return f"{self.size} {self.unit if self.size != 1 else self.unit[:-1]}"


WINDOW_TEXT = re.compile(r"\s*(?:(?P<all>all)|(?P<size>\d+)\s*(?P<unit>days?|rows?))\s*", re.I)


def parse_window(value: Any) -> Window:
    """`all`, `<N> days` or `<N> rows` (N > 0); one message for every other value."""
    if isinstance(value, Window):
        return value
    match = WINDOW_TEXT.fullmatch(value) if isinstance(value, str) else None
    if match is None or (match["size"] is not None and int(match["size"]) == 0):
        raise ValueError("must be `all`, `<N> days` or `<N> rows`, N a whole number above 0")
    if match["all"]:
        return Window(unit="all", size=None)
    unit = match["unit"].lower()
    return Window(unit="days" if unit.startswith("day") else "rows", size=int(match["size"]))


# Written as text in params.yaml (and so in MLflow params and DAG overrides: `train.window=30
# days`); a mapping form would not survive `--set` overrides that change the unit.
TrainWindow = Annotated[Window, PlainValidator(parse_window), PlainSerializer(str, return_type=str)]


class TrainParams(Section):
    experiment: str = Field(min_length=1)
    window: TrainWindow
    estimator: str = Field(min_length=1)
    random_state: int | None
    class_weight: Literal["balanced"] | None
    hyperparameters: dict[str, dict[str, Any]]


class GateMetric(Section):
    classification: ClassificationMetric
    regression: RegressionMetric


class RegisterParams(Section):
    model_name: str | None
    metric: GateMetric
    min_improvement: float
    on_schema_change: Literal["promote", "keep"]


class MonitorParams(Section):
    """The reference profile's resolution (train) and the drift verdict (pipelines/monitor.py)."""

    bins: int = Field(ge=2, le=100)
    max_categories: int = Field(ge=1, le=1000)
    psi_threshold: float = Field(gt=0)
    min_samples: int = Field(ge=1)
    window: str = Field(pattern=PROMETHEUS_RANGE)


class Params(Section):
    ingest: IngestParams
    schema_: SchemaParams = Field(alias="schema")  # `schema` is a BaseModel attribute
    validation: ValidationParams
    split: SplitParams
    train: TrainParams
    register_: RegisterParams = Field(alias="register")  # and `register` one of its class's
    monitor: MonitorParams

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @property
    def schema(self) -> SchemaParams:  # type: ignore[override]
        return self.schema_

    @property
    def register(self) -> RegisterParams:
        return self.register_

    @model_validator(mode="after")
    def _ranges_name_numeric_features(self) -> Params:
        for column in self.validation.ranges:
            if column not in self.schema_.numeric_features:
                raise ValueError(f"validation.ranges.{column}: not one of schema.numeric_features")
        return self

    def model_name(self) -> str:
        """`register.model_name`, else $MODEL_NAME, else `conveyor` (as params.yaml says)."""
        return self.register.model_name or os.environ.get("MODEL_NAME") or "conveyor"

    def sections(self, *names: str) -> dict[str, Any]:
        """The named sections as plain JSON values (for MLflow params and model metadata)."""
        dumped = self.model_dump(mode="json", by_alias=True)
        return {name: dumped[name] for name in names}


def describe(error: ValidationError) -> str:
    """pydantic's errors as one line: `train.estimator: Input should be ...; ...`."""
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "missing (params.yaml must set every key)"
        else:
            message = item["msg"].removeprefix("Value error, ")
            value = item.get("input")
            if isinstance(value, (str, int, float, bool)) or value is None:
                message += f" (got {value!r})"
        parts.append(f"{key}: {message}" if key else message)
    return "; ".join(parts)


def validate(raw: Any, where: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise PipelineError(f"{where} must hold a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(f"{where}: {describe(exc)}") from None


def load_params(path: str | os.PathLike) -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PipelineError(f"cannot read params file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise PipelineError(f"params file {path} is not valid YAML: {detail}") from exc
    return validate(raw, where=path.name)
