"""The anomaly-only task: an IsolationForest learns healthy behaviour; no failure labels are needed to fit.

Fitted on the windows whose ground truth (or, for data without truth, every window)
is healthy. Thresholds are calibrated on out-of-fold scores of held-out healthy
robots (grouped folds, like `ModelSelection`); evaluation uses the labels where
they exist (PR-AUC of the anomaly score against labelled fault windows, recall and
false-alarm rate at the warning threshold). Exported as the compact single
TreeEnsemble graph (`trainer.stages.compact_isoforest`), parity-checked.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from agent.contract.manifest import AlertHead
from trainer.config import TrainerConfig
from trainer.errors import DataError
from trainer.registry import Registry
from trainer.stages.evaluation import Evaluation, calibrate
from trainer.stages.extraction import Dataset
from trainer.stages.preparation import grouped_time_folds
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


def train_anomaly_detector(
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
    """Fit on healthy windows, calibrate on held-out healthy robots, evaluate, export, register."""
    from sklearn.metrics import average_precision_score

    timer = StageTimer()
    prepared = prepare_windows(config, train, test, timer, require_truth=False)
    spec, train_data, test_data = prepared.spec, prepared.train_data, prepared.test_data
    train_windows, test_windows = prepared.train_windows, prepared.test_windows
    healthy = train_windows.healthy
    if not healthy.any():
        raise DataError("no healthy training windows: the anomaly task learns from healthy data")
    training = ModelTraining(config.model, config.seed)
    oof = np.full(len(train_windows), np.nan)
    for train_idx, val_idx in grouped_time_folds(
        train_windows.robot, train_windows.end_ts, config.selection.folds
    ):
        fit_idx = train_idx[healthy[train_idx]]
        if not len(fit_idx) or not len(val_idx):
            continue
        fold = training.fit(train_windows.features[fit_idx], np.zeros(len(fit_idx)), task="anomaly")
        oof[val_idx] = -fold.estimator.score_samples(train_windows.features[val_idx].astype(np.float32))
    validated_healthy = healthy & np.isfinite(oof)
    floors = config.thresholds.model_copy(update={"min_warning": 0.0, "min_critical": 0.0})
    thresholds = calibrate(oof[validated_healthy], floors)
    fitted = timer.run(
        "train",
        lambda: training.fit(train_windows.features[healthy], np.zeros(int(healthy.sum())), task="anomaly"),
    )
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
    exported = timer.run(
        "export", lambda: TrainedMLModel(config.parity).export(fitted, test_windows.features)
    )
    model_name = name or f"{config.model_name}-anomaly"
    registry = Registry(registry_root or config.registry, model_name)
    version = registry.next_version()
    lineage = {
        "data_hash": hashlib.sha256(f"{train_data.data_hash}:{test_data.data_hash}".encode()).hexdigest(),
        "train_data_hash": train_data.data_hash,
        "test_data_hash": test_data.data_hash,
        "code_version": code_version(),
        "config_hash": config_hash(config),
        "estimator": "isolation_forest",
        "seed": str(config.seed),
    }
    head = AlertHead(
        output=exported.score_output,
        column=0,
        component="robot",
        failure_mode="anomaly",
        meaning="isolation-forest anomaly score 2^(-E[h]/c): unlike the healthy training fleet when high",
        thresholds=thresholds,
    )
    order = np.argsort(-score, kind="stable")
    golden_idx = np.unique(np.concatenate([order[:3], order[-3:]]))
    manifest = TrainedMLModel.manifest(
        model_id=model_name,
        version=version,
        task="anomaly",
        spec=spec,
        exported=exported,
        heads=[head],
        train_features=train_windows.features[healthy],
        golden_features=test_windows.features[golden_idx],
        metrics={**metrics, "parity_max_abs_diff": exported.max_abs_diff},
        lineage=lineage,
    )
    evaluation = Evaluation(metrics=metrics, classes=("healthy", "anomaly"))
    files = version_files(
        manifest,
        exported,
        {"metrics": metrics, "thresholds": thresholds.model_dump(), "lineage": lineage},
        config,
        train_data,
        test_data,
    )
    if report:
        from trainer.report import binary_report

        summary = {"model": manifest.label, "metrics": metrics, "lineage": lineage}
        files.update(
            binary_report("Anomaly detector", faulty.astype(int), score, thresholds.warning, summary)
        )
    proba = score.reshape(-1, 1)
    result = RunResult(
        manifest, exported, evaluation, fitted, test_windows, proba, test_data=test_data, files=files
    )
    result.timings = timer.timings
    return store_run(result, registry, version, write_registry=write_registry, bundled_dir=bundled_dir)
