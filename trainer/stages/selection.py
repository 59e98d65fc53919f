"""ModelSelection: interchangeable candidate estimators compared by grouped, time-aware cross-validation.

Each candidate (a `ModelKind`: random forest, extra trees, histogram gradient
boosting, linear baseline, IsolationForest for anomaly-only data) is fitted on
the folds of `trainer.stages.preparation.grouped_time_folds` (whole robots held
out; with one robot, train on the past and validate on the future). The
out-of-fold scores rank the candidates by the metric named in config
(``trainer.selection.metric``) and calibrate the winner's thresholds on robots it
has not seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from trainer.config import ModelKind
from trainer.errors import TrainingError
from trainer.metrics import HIGHER_IS_BETTER, classifier_metric
from trainer.stages.preparation import WindowSet, grouped_time_folds
from trainer.stages.training import ModelTraining

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
FoldPredictor = Callable[[IntArray, IntArray], "FloatArray | None"]
"""(training indices, validation indices) → scores of the validation windows, or None to skip the fold."""


@dataclass(slots=True)
class CandidateResult:
    """Out-of-fold scores of one candidate and its selection metric."""

    kind: ModelKind
    oof: FloatArray
    """Class probabilities per training window (NaN rows were never validated), shape (n, n_classes)."""
    score: float
    fold_scores: list[float] = field(default_factory=list)

    @property
    def validated(self) -> npt.NDArray[np.bool_]:
        """Windows that received an out-of-fold score."""
        return ~np.isnan(self.oof[:, 0])


def out_of_fold(windows: WindowSet, n_folds: int, width: int, predict: FoldPredictor) -> FloatArray:
    """Scores of every window from a model that never saw its robot (NaN where no fold validated it).

    The folds are `grouped_time_folds` (whole robots held out; one robot: past → future);
    `predict` fits on a fold's training windows and scores its validation windows.
    """
    oof = np.full((len(windows), width), np.nan)
    for train_idx, val_idx in grouped_time_folds(windows.robot, windows.end_ts, n_folds):
        if not len(val_idx):
            continue
        scores = predict(train_idx, val_idx)
        if scores is not None:
            oof[val_idx] = np.asarray(scores, dtype=np.float64).reshape(len(val_idx), width)
    return oof


class ModelSelection:
    """Stage 3: ranks candidate estimators by grouped time-aware cross-validation."""

    def __init__(
        self,
        training: ModelTraining,
        candidates: Sequence[ModelKind],
        metric: str,
        folds: int,
        false_alarm_rate: float = 0.01,
    ) -> None:
        if metric not in HIGHER_IS_BETTER:
            raise TrainingError(
                f"unknown selection metric {metric!r}; choose from {sorted(HIGHER_IS_BETTER)}"
            )
        self._training = training
        self._candidates = tuple(candidates)
        self._metric = metric
        self._folds = folds
        self._far = false_alarm_rate

    def select_classifier(self, windows: WindowSet, fit_mask: npt.NDArray[np.bool_]) -> list[CandidateResult]:
        """Every candidate's out-of-fold result, best first. `fit_mask` marks windows usable for fitting."""
        results = [self._cross_validate(kind, windows, fit_mask) for kind in self._candidates]
        sign = 1.0 if HIGHER_IS_BETTER[self._metric] else -1.0
        results.sort(key=lambda r: -sign * (r.score if np.isfinite(r.score) else -sign * np.inf))
        return results

    def _cross_validate(
        self, kind: ModelKind, windows: WindowSet, fit_mask: npt.NDArray[np.bool_]
    ) -> CandidateResult:
        n_classes = len(windows.classes)
        fold_scores: list[float] = []

        def predict(train_idx: IntArray, val_idx: IntArray) -> FloatArray | None:
            fit_idx = train_idx[fit_mask[train_idx]]
            if len(np.unique(windows.label[fit_idx])) < 2:
                return None
            fitted = self._training.fit(windows.features[fit_idx], windows.label[fit_idx], kind=kind)
            proba = fitted.estimator.predict_proba(windows.features[val_idx].astype(np.float32))
            full = np.zeros((len(val_idx), n_classes))
            for col, cls in enumerate(fitted.classes):
                full[:, cls] = proba[:, col]
            fold_scores.append(self._score(windows.label[val_idx], full, fitted.classes))
            return full

        oof = out_of_fold(windows, self._folds, n_classes, predict)
        validated = ~np.isnan(oof[:, 0])
        if not validated.any():
            raise TrainingError(
                f"{kind}: no cross-validation fold could be fitted (too few robots or labels)"
            )
        scored = sorted(set(windows.label[fit_mask].tolist()))
        score = self._score(windows.label[validated], oof[validated], scored)
        return CandidateResult(kind, oof, score, fold_scores)

    def _score(self, labels: IntArray, full: FloatArray, scored: Sequence[int]) -> float:
        return classifier_metric(self._metric, labels, full, scored, self._far)
