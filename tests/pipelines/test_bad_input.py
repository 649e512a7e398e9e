"""Every bad input of a labelled table, through the stage commands: a one-line reason naming the
column (and the classes and counts) and the exit code the DAG branches on, never a traceback.

validate quarantines a bad batch (exit 3); what only shows in the whole dataset or its split is
train's bad input (exit 2). Estimator settings are in test_train.py, params in test_params.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.common import EXIT_BAD_INPUT, EXIT_QUARANTINED, LANDING_DIR
from pipelines.ingest import ingest
from pipelines.train import main as train_main
from pipelines.validate import main as validate_main
from tests.pipelines.conftest import edit, write_params

pytestmark = pytest.mark.unit


def _thirds(df: pd.DataFrame) -> pd.DataFrame:
    """Class 0, then 1, then 2 by time: the latest rows hold a class training never sees."""
    df["churned"] = np.select([df.index < 300, df.index < 480], [0, 1], 2)
    return df


def _lonely_class(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[7, "churned"] = 2
    return df


def _column(name, values):
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df[name] = values(df) if callable(values) else values
        return df

    return mutate


# (case, params changes, mutation of the landed demo batch, stage, exit code, message)
CASES = [
    (
        "target with one class",
        {},
        _column("churned", 0),
        "validate",
        EXIT_QUARANTINED,
        "min_classes(churned)",
    ),
    (
        "target with nulls",
        {},
        _column("churned", lambda df: df["churned"].where(df.index != 3)),
        "validate",
        EXIT_QUARANTINED,
        "not_nullable(churned)",
    ),
    (
        "a feature all null",
        {},
        _column("age", np.nan),
        "validate",
        EXIT_QUARANTINED,
        "max_null_fraction(age)",
    ),
    (
        "text in a numeric feature",
        {},
        _column("age", lambda df: df["age"].astype(str).where(df.index != 5, "forty")),
        "validate",
        EXIT_QUARANTINED,
        "coerce_dtype('float64')(age)",
    ),
    (
        "a feature all null, null rates allowed",
        {"validation.max_null_fraction": 1.0},
        _column("age", np.nan),
        "train",
        EXIT_BAD_INPUT,
        "feature(s) null in every training row: age",
    ),
    (
        "a holdout class training never sees",
        {},
        _thirds,
        "train",
        EXIT_BAD_INPUT,
        "the holdout has class(es) that training never sees: '2' (120); training classes: "
        "'0' (300), '1' (180) (the holdout is the latest 120 rows by 'event_time')",
    ),
    (
        "a holdout of one class",
        {},
        _column("churned", lambda df: (df.index >= 420).astype(int)),
        "train",
        EXIT_BAD_INPUT,
        "the holdout holds one class only: '1' (120)",
    ),
    (
        "a holdout too small to score",
        {"split.holdout_fraction": 0.001},
        None,
        "train",
        EXIT_BAD_INPUT,
        "leaves 599 to train and 1 to score",
    ),
    (
        "a class of one row, random split",
        {"schema.date_column": None},
        _lonely_class,
        "train",
        EXIT_BAD_INPUT,
        "a stratified split needs 2 or more rows of each class: '2' (1)",
    ),
    (
        "a regression target that is text",
        {
            "schema.target": "contract",
            "schema.categorical_features": ["region"],
            "schema.task": "regression",
        },
        None,
        "validate",
        EXIT_QUARANTINED,
        "coerce_dtype('float64')(contract)",
    ),
]
MAINS = {"validate": validate_main, "train": train_main}


@pytest.mark.parametrize(
    ("case", "changes", "mutate", "stage", "code", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_a_bad_table_is_one_line_and_an_exit_code(
    ml_root, ml_params, capsys, case, changes, mutate, stage, code, message
):
    params = edit(ml_params, changes)
    write_params(ml_root / "params.yaml", params)
    ingest(params, ml_root)
    if mutate is not None:
        path = ml_root / LANDING_DIR / "batch.parquet"
        mutate(pd.read_parquet(path)).to_parquet(path, index=False)
    argv = ["--params", str(ml_root / "params.yaml")]
    if stage == "train":
        assert validate_main(argv) == 0, capsys.readouterr().err
        capsys.readouterr()
    assert MAINS[stage](argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    verdict = "quarantined" if code == EXIT_QUARANTINED else "error"
    assert err[-1].startswith(f"{stage}: {verdict}: ") and message in err[-1], err
    assert not [line for line in err if "Traceback" in line]
