"""Ingest: sources, bad input, and the idempotent growth of the versioned dataset."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines import demo
from pipelines.common import LANDING_DIR, PipelineError
from pipelines.data import dataset_dir
from pipelines.ingest import ingest
from pipelines.ingest import main as ingest_main
from pipelines.validate import validate
from tests.pipelines.conftest import write_params

pytestmark = pytest.mark.unit


def _with(params, **ingest_cfg):
    for key, value in ingest_cfg.items():
        setattr(params.ingest, key, value)
    return params


def test_demo_batch_lands_with_its_metadata(ml_root, ml_params):
    summary = ingest(ml_params, ml_root)
    batch = pd.read_parquet(ml_root / LANDING_DIR / "batch.parquet")
    meta = json.loads((ml_root / LANDING_DIR / "batch.json").read_text())
    assert len(batch) == 600 == summary["rows"]
    assert meta["date"] == "2026-01-01" and meta["source"] == "demo"


def test_local_csv_with_date_placeholder(ml_root, ml_params):
    incoming = ml_root / "incoming"
    incoming.mkdir()
    frame = demo.generate(pd.Timestamp("2026-02-03").date(), rows=150)
    frame.to_csv(incoming / "2026-02-03.csv", index=False)
    params = _with(ml_params, source=str(incoming / "{date}.csv"), date="2026-02-03")
    assert ingest(params, ml_root)["rows"] == 150


def test_glob_over_csv_and_parquet_files(ml_root, ml_params):
    incoming = ml_root / "incoming" / "2026-02-03"
    incoming.mkdir(parents=True)
    day = pd.Timestamp("2026-02-03").date()
    demo.generate(day, seed=1, rows=100).to_csv(incoming / "part-1.csv", index=False)
    demo.generate(day, seed=2, rows=50).to_parquet(incoming / "part-2.parquet", index=False)
    params = _with(
        ml_params, source=str(ml_root / "incoming" / "{date}" / "part-*"), date="2026-02-03"
    )
    assert ingest(params, ml_root)["rows"] == 150
    params.ingest.source = str(ml_root / "incoming" / "{date}")  # a directory
    assert ingest(params, ml_root)["rows"] == 150


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "matched no CSV/Parquet file"),
        ("empty", "is empty"),
        ("garbage", "cannot read"),
        ("bad_placeholder", "bad placeholder"),
    ],
)
def test_bad_input_fails_with_one_line_and_keeps_the_last_landing(
    ml_root, ml_params, capsys, setup, message
):
    ingest(ml_params, ml_root)
    before = (ml_root / LANDING_DIR / "batch.parquet").read_bytes()
    path = ml_root / "in.csv"
    if setup == "empty":
        path.write_text("customer_id,churned\n")
    elif setup == "garbage":
        path = ml_root / "in.parquet"
        path.write_bytes(b"not parquet at all")
    params = _with(ml_params, source=str(path))
    if setup == "bad_placeholder":
        params.ingest.source = str(ml_root / "{day}.csv")
    with pytest.raises(PipelineError, match=message):
        ingest(params, ml_root)

    write_params(ml_root / "params.yaml", params)
    assert ingest_main(["--params", str(ml_root / "params.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("ingest: error:")
    assert (ml_root / LANDING_DIR / "batch.parquet").read_bytes() == before


def test_reingesting_a_date_replaces_its_rows(ml_root, ml_params):
    for _ in range(2):
        ingest(ml_params, ml_root)
        validate(ml_params, ml_root)
    _with(ml_params, date="2026-01-02")
    ingest(ml_params, ml_root)
    validate(ml_params, ml_root)
    folder = ml_root / dataset_dir(ml_params)
    files = sorted(p.name for p in folder.glob("*.parquet"))
    assert files == ["2026-01-01.parquet", "2026-01-02.parquet"]
    data = pd.concat(pd.read_parquet(folder / f) for f in files)
    assert len(data) == 1200 and data["customer_id"].is_unique
