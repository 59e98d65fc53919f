"""The anomaly-only task: an IsolationForest learns healthy behaviour; no failure labels are needed to fit.

Fitted on the windows whose ground truth (or, for data without truth, every window)
is healthy. Thresholds are calibrated on out-of-fold scores of held-out healthy
robots (grouped folds, like `ModelSelection`); evaluation uses the labels where
they exist (PR-AUC of the anomaly score against labelled fault windows, recall and
false-alarm rate at the warning threshold). Exported as the compact single
TreeEnsemble graph (`trainer.stages.compact_isoforest`), parity-checked. The rest of
the run is `trainer.run.run_task`.
"""

from __future__ import annotations

import numpy as np

from trainer.config import TrainerConfig
from trainer.errors import DataError
from trainer.report import binary_report
from trainer.run import PreparedData, RunResult, StageTimer, TaskFit, TaskSteps, extreme_rows, one_head
from trainer.stages.evaluation import Evaluation, calibrate
from trainer.stages.selection import IntArray, out_of_fold
from trainer.stages.training import FittedModel, ModelTraining

ESTIMATOR = "isolation_forest"


def fit_anomaly_detector(config: TrainerConfig, prepared: PreparedData, timer: StageTimer) -> TaskFit:
    """Fit on healthy windows, calibrate on held-out healthy robots, evaluate against the labels."""
    from sklearn.metrics import average_precision_score

    train_windows, test_windows = prepared.train_windows, prepared.test_windows
    healthy = train_windows.healthy
    if not healthy.any():
        raise DataError("no healthy training windows: the anomaly task learns from healthy data")
    training = ModelTraining(config.model, config.seed)

    def fit_healthy(rows: IntArray) -> FittedModel:
        return training.fit(train_windows.features[rows], np.zeros(len(rows)), task="anomaly")

    def predict(train_idx: IntArray, val_idx: IntArray) -> np.ndarray | None:
        fit_idx = train_idx[healthy[train_idx]]
        if not len(fit_idx):
            return None
        fold = fit_healthy(fit_idx)
        return -fold.estimator.score_samples(train_windows.features[val_idx].astype(np.float32))

    oof = out_of_fold(train_windows, config.selection.folds, 1, predict)[:, 0]
    floors = config.thresholds.model_copy(update={"min_warning": 0.0, "min_critical": 0.0})
    thresholds = calibrate(oof[healthy & np.isfinite(oof)], floors)
    fitted: FittedModel = timer.run("train", lambda: fit_healthy(np.flatnonzero(healthy)))
    score = -fitted.estimator.score_samples(test_windows.features.astype(np.float32))
    faulty = test_windows.label > 0
    test_healthy = test_windows.healthy
    over = score >= thresholds.warning
    metrics: dict[str, float] = {
        "windows": float(len(test_windows)),
        "false_alarm_rate": float(over[test_healthy].mean()) if test_healthy.any() else float("nan"),
        "recall_at_far": float(over[faulty].mean()) if faulty.any() else float("nan"),
    }
    if faulty.any() and not faulty.all():
        metrics["pr_auc"] = float(average_precision_score(faulty, score))

    heads = one_head(
        component="robot",
        failure_mode="anomaly",
        meaning="isolation-forest anomaly score 2^(-E[h]/c): unlike the healthy training fleet when high",
        thresholds=thresholds,
    )

    def report(result: RunResult) -> dict[str, bytes]:
        summary = {"model": result.manifest.label, "metrics": metrics, "lineage": result.manifest.training}
        return binary_report("Anomaly detector", faulty.astype(int), score, thresholds.warning, summary)

    return TaskFit(
        fitted=fitted,
        test_scores=score.reshape(-1, 1),
        evaluation=Evaluation(metrics=metrics, classes=("healthy", "anomaly")),
        heads=heads,
        reference_features=train_windows.features[healthy],
        golden_features=extreme_rows(test_windows.features, score),
        score_names=("anomaly_score",),
        estimator=ESTIMATOR,
        metrics_doc={"thresholds": thresholds.model_dump()},
        report=report,
    )


ANOMALY = TaskSteps(task="anomaly", name_suffix="-anomaly", require_truth=False, fit=fit_anomaly_detector)


train_anomaly_detector = ANOMALY.train
"""Train, evaluate, export and register this task's model (`trainer.run.TaskSteps.train`)."""
