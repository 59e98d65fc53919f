"""The failure task: a classifier of failure modes, one alert head per mode.

Candidates are ranked by grouped, time-aware cross-validation (ModelSelection); the
winner is fitted on every labelled training window (early degradation left out), its
thresholds calibrated on the out-of-fold scores of healthy windows, and it is evaluated
on the test windows (ModelEvaluationValidation). The rest of the run is
`trainer.run.run_task`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.contract.manifest import AlertHead, Thresholds
from trainer.config import TrainerConfig
from trainer.errors import DataError
from trainer.report import classifier_report
from trainer.run import (
    PreparedData,
    StageTimer,
    TaskFit,
    TaskSteps,
    projection_matrix,
)
from trainer.stages.evaluation import Evaluation, ModelEvaluationValidation
from trainer.stages.preparation import WindowSet
from trainer.stages.selection import ModelSelection
from trainer.stages.training import FittedModel, ModelTraining

DEFAULT_COMPONENTS: dict[str, str] = {
    "bearing_wear": "drive_train",
    "overheating": "motors",
    "gripper_wear": "gripper",
    "collision": "arm",
}
"""Failure mode → component, used when the ground truth does not name one."""


def fit_failure_classifier(config: TrainerConfig, prepared: PreparedData, timer: StageTimer) -> TaskFit:
    """Select, fit, calibrate and evaluate the classifier on prepared windows."""
    train_windows, test_windows = prepared.train_windows, prepared.test_windows
    fit_mask = ~train_windows.ambiguous
    if not (train_windows.label[fit_mask] > 0).any():
        raise DataError(
            "training data has no failure windows: labels are absent (no fault reaches the horizon)"
        )
    training = ModelTraining(config.model, config.seed, projection_matrix(config, prepared.spec))
    candidates = config.selection.candidates or (config.model.kind,)
    selection = ModelSelection(
        training,
        candidates,
        config.selection.metric,
        config.selection.folds,
        config.thresholds.warning_false_alarm_rate,
    )
    ranked = timer.run("select", lambda: selection.select_classifier(train_windows, fit_mask))
    best = ranked[0]
    fit_set = train_windows.take(fit_mask)
    fitted: FittedModel = timer.run(
        "train", lambda: training.fit(fit_set.features, fit_set.label, kind=best.kind)
    )
    columns = {cls: col for col, cls in enumerate(fitted.classes)}
    failure_columns = {cls: col for cls, col in columns.items() if cls != 0}
    evaluation_stage = ModelEvaluationValidation(config.thresholds)
    validated = train_windows.take(best.validated)
    thresholds: dict[int, Thresholds] = timer.run(
        "evaluate",
        lambda: evaluation_stage.calibrate_heads(
            best.oof[best.validated], validated, {cls: cls for cls in failure_columns}
        ),
    )
    test_proba = fitted.estimator.predict_proba(test_windows.features.astype(np.float32))
    evaluation: Evaluation = timer.run(
        "evaluate",
        lambda: evaluation_stage.evaluate_classifier(
            test_proba,
            test_windows,
            columns,
            thresholds,
            prepared.test_data.failure_events(),
            config.labels.horizon_s,
        ),
    )
    evaluation.metrics["cv_" + config.selection.metric] = best.score
    evaluation.selection = {r.kind: r.score for r in ranked}
    components = {**DEFAULT_COMPONENTS, **train_windows.components()}
    classes = train_windows.classes

    def heads(output: str) -> Sequence[AlertHead]:
        return [
            AlertHead(
                output=output,
                column=col,
                component=components.get(classes[cls], classes[cls]),
                failure_mode=classes[cls],
                meaning=(
                    f"probability that {classes[cls]} of the {components.get(classes[cls], classes[cls])} "
                    f"leads to a failure within {config.labels.horizon_s:g} s"
                ),
                thresholds=thresholds[cls],
            )
            for cls, col in sorted(failure_columns.items())
        ]

    return TaskFit(
        fitted=fitted,
        test_scores=test_proba,
        evaluation=evaluation,
        heads=heads,
        reference_features=fit_set.features,
        golden_features=golden_rows(test_windows, test_proba, columns),
        score_names=tuple(f"p_{classes[c]}" for c in fitted.classes),
        estimator=fitted.kind,
        report=classifier_report,
    )


FAILURE = TaskSteps(task="failure_classifier", name_suffix="", require_truth=True, fit=fit_failure_classifier)


train_failure_classifier = FAILURE.train
"""Train, evaluate, export and register this task's model (`trainer.run.TaskSteps.train`)."""


def golden_rows(
    windows: WindowSet, proba: np.ndarray[Any, Any], columns: dict[int, int], per_class: int = 2
) -> Any:
    """A few test feature vectors: the highest-scoring windows of each class, and typical healthy ones."""
    picked: list[int] = []
    for cls, col in sorted(columns.items()):
        candidates = np.flatnonzero(windows.label == cls)
        if not len(candidates):
            continue
        order = candidates[np.argsort(-proba[candidates, col], kind="stable")]
        picked.extend(order[:per_class].tolist())
    if not picked:
        picked = list(range(min(len(windows), 6)))
    return windows.features[sorted(set(picked))]
