"""ModelTraining: builds a scikit-learn estimator from config and fits it.

Estimators are fitted on float32-cast features, which is what the ONNX graph is
fed, so tree split decisions agree between scikit-learn and onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from trainer.config import ModelKind, ModelParams
from trainer.errors import TrainingError

FloatArray = npt.NDArray[np.float64]
Task = Literal["classifier", "regressor", "anomaly"]


def build_estimator(
    kind: ModelKind,
    params: ModelParams,
    seed: int,
    task: Task = "classifier",
    projection: FloatArray | None = None,
) -> Any:
    """A fresh, unfitted estimator of `kind` for `task`, behind a fixed linear `projection` if given."""
    model = _bare_estimator(kind, params, seed, task)
    if projection is None or task == "anomaly" or kind in ("logistic_regression", "isolation_forest"):
        return model
    from sklearn.pipeline import Pipeline

    from trainer.stages.projection import LinearProjection

    return Pipeline([("projection", LinearProjection(projection)), ("model", model)])


def _bare_estimator(kind: ModelKind, params: ModelParams, seed: int, task: Task) -> Any:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        IsolationForest,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    weight = None if params.class_weight == "none" else params.class_weight
    forest: dict[str, Any] = {
        "n_estimators": params.n_estimators,
        "max_depth": params.max_depth,
        "min_samples_leaf": params.min_samples_leaf,
        "max_leaf_nodes": params.max_leaf_nodes,
        "random_state": seed,
        "n_jobs": params.n_jobs,
    }
    boost: dict[str, Any] = {
        "max_iter": params.n_estimators,
        "max_depth": params.max_depth,
        "learning_rate": params.learning_rate,
        "min_samples_leaf": params.min_samples_leaf,
        "max_leaf_nodes": params.max_leaf_nodes or 31,
        "random_state": seed,
    }
    if task == "anomaly" or kind == "isolation_forest":
        return IsolationForest(n_estimators=params.n_estimators, random_state=seed, n_jobs=params.n_jobs)
    if task == "classifier":
        if kind == "random_forest":
            return RandomForestClassifier(class_weight=weight, **forest)
        if kind == "extra_trees":
            return ExtraTreesClassifier(class_weight=weight, **forest)
        if kind == "hist_gradient_boosting":
            return HistGradientBoostingClassifier(class_weight=weight, **boost)
        return make_pipeline(StandardScaler(), LogisticRegression(class_weight=weight, max_iter=2000))
    if kind == "random_forest":
        return RandomForestRegressor(**forest)
    if kind == "extra_trees":
        return ExtraTreesRegressor(**forest)
    if kind == "hist_gradient_boosting":
        return HistGradientBoostingRegressor(**boost)
    return make_pipeline(StandardScaler(), Ridge(alpha=1.0))


@dataclass(frozen=True, slots=True)
class FittedModel:
    """A fitted estimator and what it was fitted for."""

    estimator: Any
    kind: ModelKind
    task: Task
    n_features: int
    classes: tuple[int, ...] = ()
    """Class labels in the estimator's output column order (classifiers)."""


class ModelTraining:
    """Stage 4: fits the selected estimator on the training windows."""

    def __init__(self, params: ModelParams, seed: int, projection: FloatArray | None = None) -> None:
        self._params = params
        self._seed = seed
        self._projection = projection

    def fit(
        self,
        features: FloatArray,
        target: npt.NDArray[Any],
        task: Task = "classifier",
        kind: ModelKind | None = None,
    ) -> FittedModel:
        """Fit on float32-cast features; raises `TrainingError` on degenerate input."""
        kind = kind or self._params.kind
        if len(features) == 0:
            raise TrainingError("no training windows")
        if task == "classifier" and len(np.unique(target)) < 2:
            raise TrainingError(
                f"training labels have a single class ({np.unique(target).tolist()}): nothing to learn"
            )
        estimator = build_estimator(kind, self._params, self._seed, task, self._projection)
        x32 = np.asarray(features, dtype=np.float32)
        try:
            if task == "anomaly":
                estimator.fit(x32)
            else:
                estimator.fit(x32, target)
        except ValueError as exc:
            raise TrainingError(f"{kind} could not be fitted: {exc}") from exc
        classes: tuple[int, ...] = ()
        if task == "classifier":
            classes = tuple(int(c) for c in estimator.classes_)
        return FittedModel(estimator, kind, task, features.shape[1], classes)
