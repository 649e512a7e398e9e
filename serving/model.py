"""The loaded model: its artifact, its serving spec and the predictor that serves it.

Where the spec comes from, in order:
1. COMPILED_DIR (a baked image: serving/model.Dockerfile compiled it at bake time) when its
   fingerprint is this model file's: no sklearn needed when the path is `onnx`;
2. the cache, CACHE_DIR/<fingerprint> (outside MODEL_DIR: a DVC output is never written to), from
   an earlier start of this model;
3. compiled now (serving.convert, once: the sklearn variant, for a registry or DVC model).
The spec says which path serves: `onnx` (onnxruntime) or `sklearn` (the estimator, loaded with
exactly the types its MLmodel trusts). FAST_PATH=off serves sklearn whatever the spec says.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from serving.artifact import Artifact, ModelLoadError, example_rows, fingerprint, read_artifact
from serving.predictors import Batch, OnnxPredictor, Output, SklearnPredictor
from serving.spec import ONNX_FILE, ServingSpec

log = logging.getLogger("serving.model")


@dataclass
class LoadedModel:
    name: str
    version: str
    artifact: Artifact
    spec: ServingSpec
    predictor: Any
    source: str
    note: str
    load_seconds: float = 0.0
    warmup: Batch | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        """The inference path that serves: onnx or sklearn."""
        return self.predictor.kind

    @property
    def classes(self) -> list[Any]:
        return self.spec.classes

    def predict(self, batch: Batch) -> Output:
        return self.predictor.predict(batch)


def find_spec(model_dir: str, digest: str, dirs: list[str]) -> tuple[ServingSpec, str] | None:
    for directory in dirs:
        try:
            spec = ServingSpec.load(directory)
        except (OSError, ValueError, TypeError):
            continue
        if spec.fingerprint == digest:
            return spec, directory
        log.warning("ignoring %s: compiled for another model file", directory)
    return None


def load_model(
    model_dir: str,
    *,
    name: str,
    version: str = "",
    compiled_dir: str = "",
    cache_dir: str = "",
    fast_path: bool = True,
) -> LoadedModel:
    """Load, pick the predictor, run the warm-up prediction. Raises ModelLoadError."""
    t0 = time.perf_counter()
    art = read_artifact(model_dir)
    digest = fingerprint(art.model_file)
    cache = os.path.join(cache_dir, digest[:32]) if cache_dir else ""
    found = find_spec(model_dir, digest, [d for d in (compiled_dir, cache) if d])
    if found is None:
        if not cache:
            raise ModelLoadError("no compiled model for this model file and no CACHE_DIR")
        spec, spec_dir = _compile(model_dir, cache, fast_path), cache
    else:
        spec, spec_dir = found
    if spec.path == "onnx" and fast_path:
        predictor: Any = OnnxPredictor(os.path.join(spec_dir, ONNX_FILE), spec)
        note = spec.note
    else:
        predictor = SklearnPredictor(_load_sklearn(art), spec)
        note = spec.note if fast_path else f"FAST_PATH=off (compiled path: {spec.path})"
    meta = art.metadata
    model = LoadedModel(
        name=name,
        version=str(version or meta.get("model_version") or meta.get("version") or "unknown"),
        artifact=art,
        spec=spec,
        predictor=predictor,
        source=model_dir,
        note=note,
    )
    model.warmup = _warm_up(model)
    model.load_seconds = time.perf_counter() - t0
    return model


def _compile(model_dir: str, out_dir: str, fast_path: bool) -> ServingSpec:
    try:
        from serving.convert import compile_model
    except ImportError as exc:
        raise ModelLoadError(
            f"this model is not compiled for this image and sklearn is not installed ({exc.name}): "
            "bake it (serving/model.Dockerfile) or serve it with the sklearn variant"
        ) from None
    log.info("compiling %s into %s (once: cached by model fingerprint)", model_dir, out_dir)
    return compile_model(model_dir, out_dir, onnx=fast_path)


def _load_sklearn(art: Artifact) -> Any:
    try:
        from serving.convert import load_estimator
    except ImportError as exc:
        raise ModelLoadError(
            f"this model is served by sklearn, which this image lacks ({exc.name}): use the "
            "sklearn variant (SERVING_SKLEARN_IMAGE)"
        ) from None
    return load_estimator(art)


def _warm_up(model: LoadedModel) -> Batch:
    spec = model.spec
    rows = example_rows(model.artifact.example, spec.input_names or None)
    if spec.columns is None:
        width = spec.tensor_width or 1
        rows = [r for r in rows if len(r) == width] or [[0.0] * width]
        batch = Batch(size=len(rows), rows=[[float(v or 0) for v in r] for r in rows])
    else:
        rows = [r for r in rows if len(r) == len(spec.columns)] or [
            [_neutral(c.type, c.categories) for c in spec.columns]
        ]
        batch = Batch(
            size=len(rows),
            columns={c.name: [r[i] for r in rows] for i, c in enumerate(spec.columns)},
        )
        for col in spec.columns:  # a null where the model takes none is not a warm-up input
            if not col.nullable:
                batch.columns[col.name] = [
                    _neutral(col.type, col.categories) if v is None else v
                    for v in batch.columns[col.name]
                ]
    try:
        model.predict(batch)
    except Exception as exc:  # noqa: BLE001 - a model that cannot predict is not ready
        raise ModelLoadError(f"warm-up prediction failed: {type(exc).__name__}: {exc}") from exc
    return batch


def _neutral(typ: str, categories: list[str] | None) -> Any:
    if typ == "string":
        return categories[0] if categories else ""
    if typ == "boolean":
        return False
    return 0.0
