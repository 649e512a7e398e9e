"""The typed params and `python -m pipelines.params`: overrides land in params.yaml, and a wrong
key, type or value is one line naming the key, exit code 2, from the editor and from any stage."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipelines.config import Params, load_params
from pipelines.ingest import main as ingest_main
from pipelines.params import main

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", path)
    return path


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        yield key, field
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from _fields(kind, f"{key}.")


def test_the_params_model_has_no_defaults_so_params_yaml_sets_every_key():
    with_defaults = [key for key, field in _fields(Params) if not field.is_required()]
    assert with_defaults == []
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, _ in _fields(Params):
        node = raw
        for part in key.split("."):
            node = node[part]  # KeyError: a key of the model missing from params.yaml


def test_set_keeps_types_comments_and_other_keys(params_file, capsys):
    assert (
        main(
            [
                "--params",
                str(params_file),
                "--set",
                "ingest.date=2026-01-02",
                "--set",
                "train.estimator=random_forest",
                "--set",
                "split.holdout_fraction=0.25",
                "--set",
                "register.model_name=null",
                "--set",
                "schema.task=regression",
                "--set",
                "validation.ranges.age=[10, 100]",
            ]
        )
        == 0
    )
    text = params_file.read_text()
    loaded = yaml.safe_load(text)
    assert loaded["ingest"]["date"] == "2026-01-02"  # still a string, not a YAML date
    assert loaded["train"]["estimator"] == "random_forest"
    assert loaded["split"]["holdout_fraction"] == 0.25
    assert loaded["register"]["model_name"] is None
    assert loaded["schema"]["task"] == "regression"
    assert loaded["validation"]["ranges"]["age"] == [10, 100]
    assert loaded["schema"]["target"] == "churned"
    assert "# logical date of the batch" in text and "age: [10, 100]" in text
    assert "ingest.date=2026-01-02" in capsys.readouterr().out

    assert main(["--params", str(params_file), "--get", "train.estimator"]) == 0
    assert capsys.readouterr().out.strip() == "random_forest"


def test_an_import_path_estimator_gets_its_hyperparameters_through_quoted_keys(params_file):
    path = "sklearn.ensemble.ExtraTreesClassifier"
    assert (
        main(
            [
                "--params",
                str(params_file),
                "--set",
                f"train.estimator={path}",
                "--set",
                f'train.hyperparameters."{path}".n_estimators=50',
            ]
        )
        == 0
    )
    params = load_params(params_file)
    assert params.train.estimator == path
    assert params.train.hyperparameters[path] == {"n_estimators": 50}
    assert params.train.hyperparameters["random_forest"]["n_estimators"] == 200  # untouched


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("train.clasifier=x", "train.clasifier: unknown key"),
        ("nosuch.key=1", "nosuch: unknown key"),
        ("ingest.date", "is not key=value"),
        ("ingest.date=yesterday", "ingest.date: Input should be a valid date"),
        ("split.holdout_fraction=1.5", "split.holdout_fraction: Input should be less than 1"),
        ("validation.min_rows=many", "validation.min_rows: Input should be a valid integer"),
        ("schema.task=clustering", "schema.task: Input should be 'classification' or"),
        ("register.metric.regression=roc_auc", "register.metric.regression: Input should be"),
        ("register.on_schema_change=maybe", "register.on_schema_change: Input should be"),
        ("validation.ranges.churned=[0, 1]", "validation.ranges.churned: not one of schema."),
        ("validation.ranges.age=[9, 1]", "validation.ranges.age: min 9.0 is above max 1.0"),
        ("schema.drop_columns=[region]", "column 'region' is in schema.categorical_features"),
        ("schema.numeric_features=[]", "validation.ranges.tenure_months: not one of"),
        ("schema.id_column=null", None),  # null is a value: no id column
        ("train.random_state=x", "train.random_state: Input should be a valid integer"),
        ("monitor.psi_threshold=0", "monitor.psi_threshold: Input should be greater than 0"),
        ("monitor.bins=1", "monitor.bins: Input should be greater than or equal to 2"),
        ("monitor.window=an hour", "monitor.window: String should match pattern"),
        ("monitor.min_samples=many", "monitor.min_samples: Input should be a valid integer"),
        ("monitor.surprise=1", "monitor.surprise: unknown key"),
        ("train.window=30", "train.window: must be `all`, `<N> days` or `<N> rows`"),
        ("train.window=0 days", "(got '0 days')"),
        ("train.window=2 weeks", "train.window: must be `all`"),
        ("train.window=12 rows", None),
        ("train.window=all", None),
    ],
)
def test_bad_values_are_refused_in_one_line_and_the_file_is_unchanged(
    params_file, capsys, assignment, message
):
    before = params_file.read_text()
    code = main(["--params", str(params_file), "--set", assignment])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0, err
        return
    assert code == 2
    assert err.startswith("params: error:") and len(err.strip().splitlines()) == 1
    assert message in err, err
    assert params_file.read_text() == before


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw["train"].pop("estimator"), "train.estimator: missing"),
        (lambda raw: raw["train"].update(classifier="random_forest"), "train.classifier: unknown"),
        (lambda raw: raw["validation"].update(min_rows="100 rows"), "validation.min_rows:"),
        (lambda raw: raw.pop("register"), "register: missing"),
        (lambda raw: raw.pop("monitor"), "monitor: missing"),
        (
            lambda raw: raw["schema"].update(numeric_features=[], categorical_features=[]),
            "schema lists no numeric_features and no categorical_features",
        ),
    ],
)
def test_every_stage_refuses_bad_params_in_one_line(params_file, capsys, edit, message):
    raw = yaml.safe_load(params_file.read_text())
    edit(raw)
    params_file.write_text(yaml.safe_dump(raw))
    assert ingest_main(["--params", str(params_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ingest: error: params.yaml: ") and "\n" not in err
    assert message in err, err


def test_a_params_file_that_is_not_yaml_is_one_line(params_file, capsys):
    params_file.write_text("ingest: [unclosed\n")
    assert ingest_main(["--params", str(params_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not valid YAML" in err and "\n" not in err


def _documented_keys() -> set[str]:
    """The keys in the first column of the README's params table (`a.{b,c}` is a.b and a.c;
    `a.<column>` documents the mapping a)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The ML pipeline on a laptop")[1].split("\n## ")[0]
    keys = set()
    for row in re.findall(r"^\| (`[^|]+) \|", section, flags=re.M):
        for key in re.findall(r"`([^`]+)`", row):
            key = re.sub(r"\.<\w+>$", "", key)
            prefix, _, names = key.partition("{")
            keys |= {prefix + n for n in names.rstrip("}").split(",")} if names else {key}
    return keys


def test_the_readme_documents_every_key():
    leaves = [
        key
        for key, field in _fields(Params)
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel))
    ]
    assert sorted(set(leaves) - _documented_keys()) == []
