"""serving.artifact: MLmodel signatures (columns, tensor, none) and the one-line reasons a model
directory cannot be served."""

from __future__ import annotations

import json

import pytest
import yaml

from serving.artifact import ModelLoadError, example_rows, parse_signature, read_artifact

pytestmark = pytest.mark.unit


def mlmodel(inputs) -> dict:
    return {"signature": {"inputs": json.dumps(inputs) if inputs is not None else None}}


def test_column_signature_keeps_names_types_and_optional_columns():
    features, tensor = parse_signature(
        mlmodel(
            [
                {"name": "tenure months", "type": "double"},
                {"name": "charges (usd)", "type": "double", "required": False},
                {"name": "contract", "type": "string"},
            ]
        )
    )
    assert tensor is None
    assert [(f.name, f.type, f.required) for f in features] == [
        ("tenure months", "double", True),
        ("charges (usd)", "double", False),
        ("contract", "string", True),
    ]


def test_tensor_signature_is_rows_of_n_numbers():
    features, tensor = parse_signature(
        mlmodel([{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}])
    )
    assert features is None and (tensor.dtype, tensor.width) == ("float64", 4)
    assert parse_signature({}) == (None, None)  # no signature: the estimator's own names


@pytest.mark.parametrize(
    "inputs, message",
    [
        (
            [{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 28, 28]}}],
            "not (-1, n)",
        ),
        ([{"type": "tensor", "tensor-spec": {"dtype": "str", "shape": [-1, 2]}}], "not numeric"),
        ([{"name": "a", "type": "binary"}], "unsupported type 'binary'"),
        ([{"name": "a", "type": "double"}, {"name": "a", "type": "double"}], "duplicate"),
        ([{"name": "a", "type": "double"}, {"type": "double"}], "mixes named and unnamed"),
    ],
)
def test_unservable_signatures_say_why(inputs, message):
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_signature(mlmodel(inputs))


def test_model_directories_that_cannot_be_served(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_artifact(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="no MLmodel file"):
        read_artifact(str(tmp_path))
    flavor = {"sklearn": {"pickled_model": "model.skops"}}
    (tmp_path / "MLmodel").write_text(yaml.safe_dump({"flavors": flavor}))
    with pytest.raises(ModelLoadError, match="model.skops is missing"):
        read_artifact(str(tmp_path))


def test_input_examples_become_rows_with_nan_as_null():
    split = {"columns": ["b", "a"], "data": [[1.0, float("nan")], [2.0, "x"]]}
    assert example_rows(split, ["a", "b"]) == [[None, 1.0], ["x", 2.0]]
    assert example_rows({"inputs": [[1, 2]]}, None) == [[1, 2]]
    assert example_rows([{"a": 1, "b": None}], ["a", "b"]) == [[1, None]]
    assert example_rows(None, ["a"]) == []
