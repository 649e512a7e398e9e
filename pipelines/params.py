"""Set pipeline params in the workspace's params.yaml, then let `dvc repro` pick them up.

    python -m pipelines.params --set ingest.date=2026-01-02 --set train.estimator=random_forest
    python -m pipelines.params --set 'train.hyperparameters."sklearn.svm.SVC".probability=true'
    python -m pipelines.params --get ingest.date
    python -m pipelines.params --params other/params.yaml --set ingest.source='data/in/{date}.csv'

Keys are dotted paths; a part holding dots (an import path, a column name) is written in double
quotes. The edited file must still be valid params (pipelines/config.py): a typo, a wrong type
or a value out of range is a one-line error naming the key (exit code 2) and the file is left as
it was. Values are parsed as YAML scalars/lists (`0.5`, `true`, `null`, `[a, b]`), except that a
value replacing a string stays a string (dates, ids). Comments and order in the file are
preserved and the file is replaced atomically. Running a stage script directly would leave
dvc.lock stale; setting params and running `dvc repro <stage>` keeps DVC's record true.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq

from pipelines.common import DEFAULT_PARAMS, EXIT_BAD_INPUT, PipelineError, atomic_write_text
from pipelines.config import validate

KEY = re.compile(r'(?:"[^"]+"|[^."]+)(?:\.(?:"[^"]+"|[^."]+))*')


def _yaml() -> YAML:
    rt = YAML()  # round-trip: keeps comments, order and quoting
    rt.preserve_quotes = True
    rt.width = 100
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    return rt


def _parse_value(raw: str, current: Any) -> Any:
    if isinstance(current, str):
        return None if raw in ("null", "~") else raw
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw
    if not isinstance(value, (str, int, float, bool, list, dict, type(None))):
        return raw  # e.g. a date: keep the text
    if isinstance(value, list) and isinstance(current, CommentedSeq) and current.fa.flow_style():
        value = CommentedSeq(value)
        value.fa.set_flow_style()  # keep `[a, b]` on one line as it was
    return value


def key_parts(key: str) -> list[str]:
    """`a."b.c".d` -> ["a", "b.c", "d"]."""
    if not KEY.fullmatch(key):
        raise PipelineError(f"'{key}' is not a dotted key (quote a part that holds dots)")
    return [quoted or plain for quoted, plain in re.findall(r'"([^"]+)"|([^."]+)', key)]


def _walk(doc: Any, key: str, create: bool = False) -> tuple[Any, str]:
    """The mapping holding the last part of dotted `key`, and that last part. With `create`,
    missing mappings are added (whether the key may exist is for the params model to say)."""
    parts = key_parts(key)
    node = doc
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, dict) and part not in node and create:
            node[part] = {}
        if not isinstance(node, dict) or part not in node:
            raise PipelineError(f"unknown param '{key}' ('{'.'.join(parts[: i + 1])}' not found)")
        node = node[part]
    if not isinstance(node, dict) or (parts[-1] not in node and not create):
        raise PipelineError(f"unknown param '{key}'")
    return node, parts[-1]


def set_params(path: Path, assignments: list[str]) -> dict[str, Any]:
    """Apply `key=value` assignments to the params file; return {key: new value}."""
    rt = _yaml()
    try:
        doc = rt.load(path.read_text())
    except OSError as exc:
        raise PipelineError(f"cannot read params file {path}: {exc.strerror}") from exc
    changed: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise PipelineError(f"'{assignment}' is not key=value")
        node, leaf = _walk(doc, key.strip(), create=True)
        node[leaf] = _parse_value(raw, node.get(leaf))
        changed[key.strip()] = node[leaf]
    out = io.StringIO()
    rt.dump(doc, out)
    validate(yaml.safe_load(out.getvalue()), where=path.name)
    atomic_write_text(path, out.getvalue())
    return changed


def get_param(path: Path, key: str) -> Any:
    try:
        with path.open() as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise PipelineError(f"cannot read params file {path}: {exc.strerror}") from exc
    node, leaf = _walk(doc, key)
    return node[leaf]


def _show(value: Any) -> str:
    return str(value) if isinstance(value, str) else json.dumps(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.params", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file (%(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--get", metavar="KEY")
    args = parser.parse_args(argv)
    if not args.set and not args.get:
        parser.error("give --set KEY=VALUE (repeatable) or --get KEY")
    path = Path(args.params)
    try:
        if args.set:
            for key, value in set_params(path, args.set).items():
                print(f"{key}={_show(value)}")
        if args.get:
            print(_show(get_param(path, args.get)))
    except PipelineError as exc:
        print(f"params: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
