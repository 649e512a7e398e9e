"""The model families of `train.estimator` and the sklearn Pipeline that train fits.

`train.estimator` is a built-in family, resolved by the task:

    name                    classification                    regression
    logistic_regression     LogisticRegression                -
    ridge                   -                                 Ridge
    random_forest           RandomForestClassifier            RandomForestRegressor
    hist_gradient_boosting  HistGradientBoostingClassifier    HistGradientBoostingRegressor

or the import path of any scikit-learn-compatible estimator class (`sklearn.ensemble.
ExtraTreesClassifier`, `sklearn.svm.SVR`, ...). Its hyperparameters are
`train.hyperparameters.<the value of train.estimator>`; `train.random_state` and (for
classification) `train.class_weight` are given to every estimator that takes them, unless the
hyperparameters set them. A classifier must have predict_proba: the metrics and the server
need class probabilities.

The Pipeline is `[("preprocess", ColumnTransformer), ("estimator", ...)]`: numeric features
median-imputed and scaled, categorical ones mode-imputed and one-hot encoded (unknown categories
ignored). Only stock sklearn transformers, so that the server can compile it (skl2onnx).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sklearn.base import is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipelines.common import PipelineError, first_line

if TYPE_CHECKING:
    from pipelines.config import Params

BUILTINS: dict[str, dict[str, type]] = {
    "logistic_regression": {"classification": LogisticRegression},
    "ridge": {"regression": Ridge},
    "random_forest": {
        "classification": RandomForestClassifier,
        "regression": RandomForestRegressor,
    },
    "hist_gradient_boosting": {
        "classification": HistGradientBoostingClassifier,
        "regression": HistGradientBoostingRegressor,
    },
}


def import_estimator(path: str) -> type:
    """The class named by an import path such as `sklearn.ensemble.ExtraTreesClassifier`."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise PipelineError(
            f"train.estimator '{path}' is neither a built-in ({', '.join(BUILTINS)}) nor an "
            "import path such as sklearn.ensemble.ExtraTreesClassifier"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(
            f"train.estimator '{path}' does not import: {first_line(exc)}"
        ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise PipelineError(f"train.estimator '{path}': module {module_name} has no {attr}")
    if not isinstance(cls, type) or not all(hasattr(cls, m) for m in ("fit", "get_params")):
        raise PipelineError(
            f"train.estimator '{path}' is not a scikit-learn estimator class (fit, get_params)"
        )
    return cls


def estimator_class(name: str, task: str) -> type:
    if name not in BUILTINS:
        return import_estimator(name)
    if task not in BUILTINS[name]:
        fitting = [n for n, by_task in BUILTINS.items() if task in by_task]
        raise PipelineError(
            f"train.estimator '{name}' has no {task} model (the task is {task}): "
            f"choose {', '.join(fitting)} or an import path"
        )
    return BUILTINS[name][task]


def make_estimator(params: Params, task: str) -> Any:
    """The unfitted estimator of `train.estimator` for `task`, with its hyperparameters."""
    cfg = params.train
    name = cfg.estimator
    cls = estimator_class(name, task)
    try:
        estimator = cls()
    except Exception as exc:  # a class that cannot be built without arguments
        raise PipelineError(f"train.estimator '{name}': {first_line(exc)}") from None
    fits_task = is_classifier(estimator) if task == "classification" else is_regressor(estimator)
    if not fits_task:
        raise PipelineError(f"train.estimator '{name}' is not a {task} model (the task is {task})")

    hyper = dict(cfg.hyperparameters.get(name) or {})  # none listed: the estimator's own
    accepted = estimator.get_params(deep=False)
    unknown = sorted(set(hyper) - set(accepted))
    if unknown:
        raise PipelineError(
            f"train.hyperparameters.{name}: {', '.join(unknown)} not accepted by "
            f"{cls.__name__} (it takes: {', '.join(sorted(accepted))})"
        )
    if "random_state" in accepted and cfg.random_state is not None:
        hyper.setdefault("random_state", cfg.random_state)
    if task == "classification" and "class_weight" in accepted and cfg.class_weight:
        hyper.setdefault("class_weight", cfg.class_weight)
    estimator.set_params(**hyper)
    if task == "classification" and not hasattr(estimator, "predict_proba"):
        raise PipelineError(
            f"train.estimator '{name}' has no predict_proba with these hyperparameters: the "
            "metrics and the server need class probabilities (e.g. SVC needs probability: true)"
        )
    return estimator


def class_path(estimator: Any) -> str:
    cls = type(estimator)
    return f"{cls.__module__}.{cls.__qualname__}"


def build_pipeline(params: Params, estimator: Any) -> Pipeline:
    """Preprocessing of the schema's features, then the estimator."""
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent")),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    schema = params.schema
    transformers = [
        (label, transformer, columns)
        for label, transformer, columns in (
            ("numeric", numeric, schema.numeric_features),
            ("categorical", categorical, schema.categorical_features),
        )
        if columns
    ]
    return Pipeline([("preprocess", ColumnTransformer(transformers)), ("estimator", estimator)])
