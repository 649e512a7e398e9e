"""Stage `ingest`: land the batch of one logical date from the configured source.

Data flow (ingest lands, validate promotes):

    source --ingest--> data/landing/{batch.parquet,batch.json}
           --validate--> data/dataset/<date>.parquet   (pass: the versioned dataset, DVC-tracked)
                     or  data/quarantine/<date>/        (fail: never trained on, exit code 3)

Ingest only lands the batch; the versioned dataset grows one file per logical date, written by
`validate` once the batch passed. Re-ingesting a date therefore replaces that date's file and
never duplicates rows, and a failing batch never reaches the data `train` reads.

Sources (`ingest.source` in params.yaml; `{date}` / `{date:%Y/%m/%d}` is filled with the date):
  - `demo`: the built-in generator (pipelines/demo.py), deterministic in (date, seed, rows);
  - a local CSV/Parquet file, directory or glob;
  - `s3://bucket/prefix/...` (file, prefix or glob) on any S3-compatible store: credentials from
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, endpoint from AWS_ENDPOINT_URL.

Files are streamed, never read whole: a batch of any size lands in bounded memory (chunks sized
by pipelines/common.py). A first pass reads each file chunk by chunk to settle every column's
type over the whole batch (as one `read_csv` of it would: integers with a blank anywhere become
floats, a column mixing kinds — CSV text and Parquet timestamps, a number column with a word —
becomes text, kept as written); the second pass writes the chunks in those types to
data/landing/batch.parquet, one row group per chunk.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import demo
from pipelines.common import (
    CHUNK_ROWS,
    LANDING_DIR,
    PipelineError,
    atomic_write_json,
    chunk_rows,
    first_line,
    replace_dir,
    run_cli,
)

if TYPE_CHECKING:
    from pipelines.config import Params

SUPPORTED = (".csv", ".csv.gz", ".parquet", ".pq")


def _filesystem(uri: str):
    import fsspec

    options: dict[str, Any] = {}
    if uri.startswith("s3://"):
        options["skip_instance_cache"] = True  # read credentials from the environment now
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
    return fsspec.core.url_to_fs(uri, **options)


def _list_files(uri: str) -> tuple[Any, list[str]]:
    fs, path = _filesystem(uri)
    try:
        if any(ch in path for ch in "*?["):
            files = sorted(fs.glob(path))
        elif fs.isdir(path):
            files = sorted(fs.find(path))
        elif fs.exists(path):
            files = [path]
        else:
            files = []
    except Exception as exc:  # network, credentials, permissions: name the source and the cause
        raise PipelineError(f"source '{uri}' is unreadable: {first_line(exc)}") from exc
    files = [f for f in files if f.lower().endswith(SUPPORTED)]
    if not files:
        raise PipelineError(f"source '{uri}' matched no CSV/Parquet file")
    return fs, files


# ----------------------------------------------------------------------------- column types
def _chunk_types(chunk: pd.DataFrame) -> dict[str, pa.DataType]:
    """Each column's Arrow type in this chunk; null for a column with no value in it (it takes
    the type the other chunks give the column)."""
    types = {}
    for col in chunk.columns:
        series = chunk[col]
        if series.isna().all():
            types[col] = pa.null()
            continue
        try:
            types[col] = pa.array(series, from_pandas=True).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # Python objects of several kinds
            types[col] = pa.string()
    return types


def _widen(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The one type of a column seen as `a` in some chunks and `b` in others."""
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_integer(a) and pa.types.is_integer(b):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in (a, b)):
        return pa.float64()
    return pa.string()


def _schema(types: dict[str, pa.DataType]) -> pa.Schema:
    """A column with no value anywhere is stored as text (nothing says what else it would be)."""
    return pa.schema([(c, pa.string() if pa.types.is_null(t) else t) for c, t in types.items()])


def _as_text(series: pd.Series) -> pa.Array:
    """Values of a column of mixed kinds as text (nulls kept): the landed batch stays raw and
    validate coerces the types it expects."""
    values = [
        None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)
        for v in series.astype(object)
    ]
    return pa.array(values, type=pa.string())


def _to_arrow(chunk: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    columns = []
    for name, kind in zip(schema.names, schema.types, strict=True):
        if name not in chunk:  # a file without this column (another file of the batch has it)
            columns.append(pa.nulls(len(chunk), kind))
        elif pa.types.is_string(kind):
            series = chunk[name]
            columns.append(
                pa.array(series, from_pandas=True, type=pa.string())
                if pd.api.types.is_string_dtype(series) and series.dtype != object
                else _as_text(series)
            )
        else:
            columns.append(pa.array(chunk[name], from_pandas=True).cast(kind))
    return pa.Table.from_arrays(columns, schema=schema)


def _csv_bytes_per_row(fh: Any, compression: str | None) -> float:
    """Bytes per line in the first MiB of a CSV file (decompressed), to size its chunks."""
    import gzip

    sample = (gzip.GzipFile(fileobj=fh) if compression else fh).read(1 << 20)
    fh.seek(0)
    return len(sample) / max(sample.count(b"\n"), 1)


# ----------------------------------------------------------------------------- sources
class Source:
    """The files of one batch, read chunk by chunk (twice: types first, then the rows)."""

    def __init__(self, fs: Any, files: list[str]):
        self.fs, self.files = fs, files

    def chunks(self, text: frozenset[str] = frozenset()) -> Iterator[pd.DataFrame]:
        """Every file's rows, a chunk at a time; CSV columns in `text` are read as written."""
        for name in self.files:
            try:
                with self.fs.open(name, "rb") as fh:
                    yield from self._read(name, fh, text)
            except PipelineError:
                raise
            except Exception as exc:
                raise PipelineError(f"cannot read '{name}': {first_line(exc)}") from exc

    def survey(self) -> tuple[pa.Schema, int]:
        """The batch's columns (first-seen order) with one type each, and its row count."""
        types: dict[str, pa.DataType] = {}
        rows = 0
        for chunk in self.chunks():
            rows += len(chunk)
            for col, kind in _chunk_types(chunk.rename(columns=str)).items():
                types[col] = _widen(types[col], kind) if col in types else kind
        return _schema(types), rows

    @staticmethod
    def _read(name: str, fh: Any, text: frozenset[str]) -> Iterator[pd.DataFrame]:
        if name.lower().endswith((".parquet", ".pq")):
            parquet = pq.ParquetFile(fh)
            meta = parquet.metadata
            size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            rows = chunk_rows(size / max(meta.num_rows, 1))
            for batch in parquet.iter_batches(batch_size=rows):
                yield batch.to_pandas()
            return
        compression = "gzip" if name.lower().endswith(".gz") else None
        rows = chunk_rows(_csv_bytes_per_row(fh, compression))
        dtype = dict.fromkeys(text, str) or None  # names the file lacks are ignored by pandas
        with pd.read_csv(fh, compression=compression, chunksize=rows, dtype=dtype) as reader:
            yield from reader


class DemoSource(Source):
    """The built-in generator, made part by part: memory bounded whatever ingest.demo.rows."""

    def __init__(self, date: dt.date, seed: int, rows: int):
        super().__init__(None, ["demo"])
        self.date, self.seed, self.rows = date, seed, rows

    def chunks(self, text: frozenset[str] = frozenset()) -> Iterator[pd.DataFrame]:
        return demo.batch_parts(self.date, self.seed, self.rows, CHUNK_ROWS)

    def survey(self) -> tuple[pa.Schema, int]:
        """Every part has the same columns and types: the first part says them."""
        first = next(iter(self.chunks()), pd.DataFrame())
        return _schema(_chunk_types(first)), self.rows


def open_source(source: str, date: dt.date, params: Params) -> Source:
    """The batch of `date` from `source` (see the module docstring)."""
    if source == "demo":
        return DemoSource(date, params.ingest.demo.seed, params.ingest.demo.rows)
    try:
        uri = source.format(date=date)
    except (KeyError, IndexError, ValueError) as exc:
        raise PipelineError(f"source '{source}': bad placeholder ({exc}); use {{date}}") from exc
    return Source(*_list_files(uri))


def ingest(params: Params, root: Path) -> dict[str, Any]:
    """Read the batch of `ingest.date` and land it in data/landing/ (replacing the last one)."""
    source_name = params.ingest.source.strip()
    if not source_name:
        raise PipelineError("ingest.source is empty")
    date = params.ingest.date
    source = open_source(source_name, date, params)
    schema, rows = source.survey()
    if rows == 0 or not schema.names:
        raise PipelineError(f"batch for {date} from '{source_name}' is empty")
    text = frozenset(
        n for n, t in zip(schema.names, schema.types, strict=True) if pa.types.is_string(t)
    )
    meta = {"date": date.isoformat(), "source": source_name, "rows": rows, "columns": schema.names}

    def build(tmp: Path) -> None:
        written = 0
        with pq.ParquetWriter(tmp / "batch.parquet", schema) as writer:
            for chunk in source.chunks(text):
                writer.write_table(_to_arrow(chunk.rename(columns=str), schema))
                written += len(chunk)
        if written != rows:  # the source changed between the two passes
            raise PipelineError(
                f"source '{source_name}' changed while read ({rows} then {written} rows)"
            )
        atomic_write_json(tmp / "batch.json", meta)

    replace_dir(root / LANDING_DIR, build)
    return {
        "stage": "ingest",
        **{k: meta[k] for k in ("date", "source", "rows")},
        "path": str(LANDING_DIR / "batch.parquet"),
    }


def main(argv: list[str] | None = None) -> int:
    return run_cli("ingest", ingest, argv, doc=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
