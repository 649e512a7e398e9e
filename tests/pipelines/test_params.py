"""`python -m pipelines.params`: overrides land in params.yaml, typos are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipelines.params import main

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", path)
    return path


def test_set_keeps_types_comments_and_other_keys(params_file, capsys):
    assert main(["--params", str(params_file), "--set", "ingest.date=2026-01-02",
                 "--set", "train.classifier=random_forest", "--set", "split.holdout_fraction=0.25",
                 "--set", "register.model_name=null",
                 "--set", "validation.ranges.age=[10, 100]"]) == 0
    text = params_file.read_text()
    loaded = yaml.safe_load(text)
    assert loaded["ingest"]["date"] == "2026-01-02"  # still a string, not a YAML date
    assert loaded["train"]["classifier"] == "random_forest"
    assert loaded["split"]["holdout_fraction"] == 0.25
    assert loaded["register"]["model_name"] is None
    assert loaded["validation"]["ranges"]["age"] == [10, 100]
    assert loaded["schema"] == yaml.safe_load((REPO / "params.yaml").read_text())["schema"]
    assert "# logical date of the batch" in text and "age: [10, 100]" in text
    assert "ingest.date=2026-01-02" in capsys.readouterr().out

    assert main(["--params", str(params_file), "--get", "train.classifier"]) == 0
    assert capsys.readouterr().out.strip() == "random_forest"


@pytest.mark.parametrize("assignment", ["train.clasifier=x", "nosuch.key=1", "ingest.date"])
def test_unknown_keys_are_refused_and_the_file_is_unchanged(params_file, capsys, assignment):
    before = params_file.read_text()
    assert main(["--params", str(params_file), "--set", assignment]) == 2
    assert capsys.readouterr().err.startswith("params: error:")
    assert params_file.read_text() == before
