"""The remaining-useful-life task on robot logs: seconds until a developing fault fails, capped.

The target of a window is the truth's seconds to failure while a fault is present,
capped at ``trainer.labels.horizon_s`` (a piecewise-linear target, as for C-MAPSS);
healthy windows get the cap. A regressor (``trainer.model.kind``) behind the same
projection as the classifier is fitted; its head is lower-is-worse, with a warning
threshold calibrated on out-of-fold predictions for held-out healthy robots (the
value they undercut at the target false-alarm rate) and critical at half of it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from agent.contract.manifest import AlertHead, Thresholds
from trainer.config import TrainerConfig
from trainer.errors import DataError
from trainer.registry import Registry
from trainer.stages.evaluation import Evaluation
from trainer.stages.extraction import Dataset
from trainer.stages.preparation import WindowSet, grouped_time_folds
from trainer.stages.trained_model import TrainedMLModel
from trainer.stages.training import ModelTraining
from trainer.tasks.failure import (
    RunResult,
    StageTimer,
    code_version,
    config_hash,
    prepare_windows,
    store_run,
    version_files,
)


def rul_target(windows: WindowSet, cap: float) -> np.ndarray[Any, Any]:
    """Capped seconds to failure while a fault is present; the cap when healthy."""
    faulty = windows.mode != "healthy"
    return np.where(faulty, np.minimum(windows.rul_s, cap), cap)


def train_rul_regressor(
    config: TrainerConfig,
    train: Path | Dataset,
    test: Path | Dataset,
    *,
    registry_root: Path | None = None,
    name: str | None = None,
    bundled_dir: Path | None = None,
    write_registry: bool = True,
    report: bool = False,
) -> RunResult:
    """Fit, calibrate, evaluate (RMSE, MAE), export with parity and register a RUL model."""
    timer = StageTimer()
    prepared = prepare_windows(config, train, test, timer)
    spec, train_data, test_data = prepared.spec, prepared.train_data, prepared.test_data
    train_windows, test_windows = prepared.train_windows, prepared.test_windows
    cap = config.labels.horizon_s
    y_train, y_test = rul_target(train_windows, cap), rul_target(test_windows, cap)
    if not (y_train < cap).any():
        raise DataError("no training window has a fault within the horizon: remaining-life labels are absent")
    projection = None
    if config.model.projection:
        from trainer.stages.projection import contrast_matrix

        projection = contrast_matrix(spec.feature_names())[0]
    training = ModelTraining(config.model, config.seed, projection)
    oof = np.full(len(train_windows), np.nan)
    for train_idx, val_idx in grouped_time_folds(
        train_windows.robot, train_windows.end_ts, config.selection.folds
    ):
        fold = training.fit(train_windows.features[train_idx], y_train[train_idx], task="regressor")
        oof[val_idx] = fold.estimator.predict(train_windows.features[val_idx].astype(np.float32))
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
    fitted = timer.run("train", lambda: training.fit(train_windows.features, y_train, task="regressor"))
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
    exported = timer.run(
        "export", lambda: TrainedMLModel(config.parity).export(fitted, test_windows.features)
    )
    model_name = name or f"{config.model_name}-rul"
    registry = Registry(registry_root or config.registry, model_name)
    version = registry.next_version()
    lineage = {
        "data_hash": hashlib.sha256(f"{train_data.data_hash}:{test_data.data_hash}".encode()).hexdigest(),
        "code_version": code_version(),
        "config_hash": config_hash(config),
        "estimator": fitted.kind,
        "rul_cap_s": str(cap),
    }
    head = AlertHead(
        output=exported.score_output,
        column=0,
        component="robot",
        failure_mode="any_fault",
        meaning=f"seconds until a developing fault fails (capped at {cap:g} s)",
        direction="lower_is_worse",
        thresholds=thresholds,
    )
    order = np.argsort(predicted, kind="stable")
    golden_idx = np.unique(np.concatenate([order[:3], order[-3:]]))
    manifest = TrainedMLModel.manifest(
        model_id=model_name,
        version=version,
        task="remaining_life",
        spec=spec,
        exported=exported,
        heads=[head],
        train_features=train_windows.features,
        golden_features=test_windows.features[golden_idx],
        metrics={**metrics, "parity_max_abs_diff": exported.max_abs_diff},
        lineage=lineage,
    )
    files = version_files(
        manifest,
        exported,
        {"metrics": metrics, "thresholds": thresholds.model_dump(), "lineage": lineage},
        config,
        train_data,
        test_data,
    )
    if report:
        from trainer.report import regression_report

        summary = {"model": manifest.label, "metrics": metrics, "lineage": lineage}
        files.update(
            regression_report(
                "Remaining useful life",
                y_test,
                predicted,
                test_windows.robot,
                test_windows.end_ts,
                summary,
                "s",
            )
        )
    evaluation = Evaluation(metrics=metrics, classes=("remaining_life",))
    result = RunResult(
        manifest, exported, evaluation, fitted, test_windows, predicted.reshape(-1, 1), test_data=test_data
    )
    result.files = files
    result.timings = timer.timings
    return store_run(result, registry, version, write_registry=write_registry, bundled_dir=bundled_dir)
