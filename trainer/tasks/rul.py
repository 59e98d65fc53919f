"""The remaining-useful-life task on robot logs: seconds until a developing fault fails, capped.

The target of a window is the truth's seconds to failure while a fault is present,
capped at ``trainer.labels.horizon_s`` (a piecewise-linear target, as for C-MAPSS);
healthy windows get the cap. A regressor (``trainer.model.kind``) behind the same
projection as the classifier is fitted; its head is lower-is-worse, with a warning
threshold calibrated on out-of-fold predictions for held-out healthy robots (the
value they undercut at the target false-alarm rate) and critical at half of it. The
rest of the run is `trainer.run.run_task`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.contract.manifest import Thresholds
from trainer.config import TrainerConfig
from trainer.errors import DataError
from trainer.report import regression_report
from trainer.run import (
    PreparedData,
    RunResult,
    StageTimer,
    TaskFit,
    TaskSteps,
    extreme_rows,
    one_head,
    projection_matrix,
)
from trainer.stages.evaluation import Evaluation
from trainer.stages.preparation import WindowSet
from trainer.stages.selection import IntArray, out_of_fold
from trainer.stages.training import FittedModel, ModelTraining


def rul_target(windows: WindowSet, cap: float) -> np.ndarray[Any, Any]:
    """Capped seconds to failure while a fault is present; the cap when healthy."""
    faulty = windows.mode != "healthy"
    return np.where(faulty, np.minimum(windows.rul_s, cap), cap)


def fit_rul_regressor(config: TrainerConfig, prepared: PreparedData, timer: StageTimer) -> TaskFit:
    """Fit, calibrate and evaluate (RMSE, MAE) a remaining-life regressor on prepared windows."""
    train_windows, test_windows = prepared.train_windows, prepared.test_windows
    cap = config.labels.horizon_s
    y_train, y_test = rul_target(train_windows, cap), rul_target(test_windows, cap)
    if not (y_train < cap).any():
        raise DataError("no training window has a fault within the horizon: remaining-life labels are absent")
    training = ModelTraining(config.model, config.seed, projection_matrix(config, prepared.spec))

    def fit(rows: IntArray | slice) -> FittedModel:
        return training.fit(train_windows.features[rows], y_train[rows], task="regressor")

    def predict(train_idx: IntArray, val_idx: IntArray) -> np.ndarray:
        return fit(train_idx).estimator.predict(train_windows.features[val_idx].astype(np.float32))

    oof = out_of_fold(train_windows, config.selection.folds, 1, predict)[:, 0]
    healthy_oof = oof[train_windows.healthy & np.isfinite(oof)]
    if not len(healthy_oof):
        raise DataError("no healthy held-out windows to calibrate the remaining-life threshold on")
    warning = float(np.quantile(healthy_oof, config.thresholds.warning_false_alarm_rate))
    warning = min(warning, 0.5 * cap)
    thresholds = Thresholds(
        warning=round(warning, 3),
        critical=round(0.5 * warning, 3),
        clear=round(min(cap, warning / config.thresholds.clear_ratio), 3),
        target_false_alarm_rate=config.thresholds.warning_false_alarm_rate,
    )
    fitted: FittedModel = timer.run("train", lambda: fit(slice(None)))
    predicted = fitted.estimator.predict(test_windows.features.astype(np.float32))
    error = predicted - y_test
    faulty = test_windows.mode != "healthy"
    over = predicted <= thresholds.warning
    metrics: dict[str, float] = {
        "windows": float(len(test_windows)),
        "rmse_s": float(np.sqrt(np.mean(error**2))),
        "mae_s": float(np.mean(np.abs(error))),
        "rmse_s_faulty": float(np.sqrt(np.mean(error[faulty] ** 2))) if faulty.any() else float("nan"),
        "false_alarm_rate": float(over[test_windows.healthy].mean())
        if test_windows.healthy.any()
        else float("nan"),
        "recall_at_far": float(over[y_test < warning].mean()) if (y_test < warning).any() else float("nan"),
    }

    heads = one_head(
        component="robot",
        failure_mode="any_fault",
        meaning=f"seconds until a developing fault fails (capped at {cap:g} s)",
        direction="lower_is_worse",
        thresholds=thresholds,
    )

    def report(result: RunResult) -> dict[str, bytes]:
        summary = {"model": result.manifest.label, "metrics": metrics, "lineage": result.manifest.training}
        return regression_report(
            "Remaining useful life",
            y_test,
            predicted,
            test_windows.robot,
            test_windows.end_ts,
            summary,
            "s",
        )

    return TaskFit(
        fitted=fitted,
        test_scores=predicted.reshape(-1, 1),
        evaluation=Evaluation(metrics=metrics, classes=("remaining_life",)),
        heads=heads,
        reference_features=train_windows.features,
        golden_features=extreme_rows(test_windows.features, predicted),
        score_names=("predicted_rul_s",),
        estimator=fitted.kind,
        metrics_doc={"thresholds": thresholds.model_dump()},
        lineage={"rul_cap_s": str(cap)},
        report=report,
    )


RUL = TaskSteps(task="remaining_life", name_suffix="-rul", require_truth=True, fit=fit_rul_regressor)


train_rul_regressor = RUL.train
"""Train, evaluate, export and register this task's model (`trainer.run.TaskSteps.train`)."""
