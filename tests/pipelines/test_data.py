"""The data module's rules on their own: task inference, date parsing, the split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.common import PipelineError
from pipelines.data import parse_dates, resolve_task, split
from tests.pipelines.conftest import edit

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("labels", "task", "how"),
    [
        (["yes", "no", "no"], "classification", "holds labels, not numbers"),
        ([True, False, True], "classification", "holds labels, not numbers"),
        ([0, 1, 1, 0], "classification", "2 distinct whole numbers (<= schema.max_classes 20)"),
        ([0.0, 1.0, 2.0], "classification", "3 distinct whole numbers"),
        ([1.5, 2.0, 3.25], "regression", "has non-integer values"),
        (list(range(100, 130)), "regression", "30 distinct whole numbers (> schema.max_classes"),
    ],
)
def test_the_task_is_inferred_from_the_target(ml_params, labels, task, how):
    inferred, reason = resolve_task(ml_params, pd.Series(labels, name="churned"))
    assert inferred == task and reason.startswith("inferred: target 'churned' ")
    assert how in reason


def test_a_set_task_is_not_inferred(ml_params):
    params = edit(ml_params, {"schema.task": "regression"})
    assert resolve_task(params, pd.Series(["a", "b"])) == ("regression", "set by schema.task")


@pytest.mark.parametrize(
    ("values", "expected", "bad"),
    [
        ([2007, 2024, None], ["2007-01-01", "2024-01-01", None], [False, False, False]),
        ([2007.0, 1999.0], ["2007-01-01", "1999-01-01"], [False, False]),
        ([20070101, 3], [None, None], [True, True]),  # numbers that are no years
        (
            ["2026-01-02", "2026-01-02T10:30:00", "soon"],
            ["2026-01-02", "2026-01-02 10:30:00", None],
            [False, False, True],
        ),
        (["2026-01-02T10:00:00+02:00"], ["2026-01-02 08:00:00"], [False]),  # to UTC
        (["2007"], ["2007-01-01"], [False]),
        ([True, False], [None, None], [True, True]),
    ],
)
def test_dates_datetimes_and_whole_years_parse_other_values_are_named(values, expected, bad):
    parsed, mask = parse_dates(pd.Series(values))
    assert parsed.dtype == "datetime64[us]"
    assert parsed.tolist() == [pd.NaT if e is None else pd.Timestamp(e) for e in expected]
    assert mask.tolist() == bad


def _classes_sorted(n: int = 300) -> pd.DataFrame:
    """A file as some exports come: every row of class a, then b, then c."""
    return pd.DataFrame(
        {"x": np.arange(n, dtype=float), "y": ["a"] * 150 + ["b"] * 90 + ["c"] * 60}
    )


def test_a_class_sorted_file_without_dates_splits_stratified_and_seeded(ml_params):
    params = edit(
        ml_params,
        {
            "schema.target": "y",
            "schema.date_column": None,
            "schema.id_column": None,
            "schema.numeric_features": ["x"],
            "schema.categorical_features": [],
            "validation.ranges": {},
        },
    )
    train, holdout = split(_classes_sorted(), params, "classification")
    assert holdout["y"].value_counts().to_dict() == {"a": 30, "b": 18, "c": 12}
    assert train["y"].value_counts().to_dict() == {"a": 120, "b": 72, "c": 48}
    again, _ = split(_classes_sorted(), params, "classification")
    pd.testing.assert_frame_equal(train, again)  # split.random_state: the same split every time
    other = edit(params, {"split.random_state": 7})
    assert not split(_classes_sorted(), other, "classification")[0].equals(train)


def test_a_time_split_of_a_class_sorted_file_names_the_unseen_class(ml_params):
    params = edit(
        ml_params,
        {
            "schema.target": "y",
            "schema.date_column": "x",
            "schema.id_column": None,
            "schema.numeric_features": ["z"],
            "schema.categorical_features": [],
            "validation.ranges": {},
        },
    )
    with pytest.raises(PipelineError) as err:
        split(_classes_sorted(), params, "classification")
    assert str(err.value) == (
        "the holdout has class(es) that training never sees: 'c' (60); training classes: "
        "'a' (150), 'b' (90) (the holdout is the latest 60 rows by 'x')"
    )


def test_a_regression_split_is_random_and_seeded(ml_params):
    params = edit(
        ml_params,
        {
            "schema.task": "regression",
            "schema.target": "x",
            "schema.date_column": None,
            "schema.id_column": None,
            "schema.numeric_features": [],
            "schema.categorical_features": ["y"],
            "validation.ranges": {},
        },
    )
    train, holdout = split(_classes_sorted(), params, "regression")
    assert len(holdout) == 60 and len(train) == 240
    assert holdout["x"].min() < 150 < holdout["x"].max()  # not the tail of the file
