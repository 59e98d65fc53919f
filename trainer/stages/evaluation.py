"""ModelEvaluationValidation: calibrated thresholds and the metrics of each task.

Thresholds are calibrated on held-out windows of healthy robots: the warning
threshold is the score that this healthy data exceeds at the target false-alarm
rate (with a floor), critical uses a stricter rate, and ``clear`` sits below
warning for hysteresis. Metrics: PR-AUC, macro F1, recall and false-alarm rate at
the warning threshold, alert lead time before failure; RMSE and the PHM score for
remaining useful life.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract.manifest import Thresholds
from trainer.config import ThresholdConfig
from trainer.errors import TrainingError
from trainer.stages.preparation import WindowSet

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(slots=True)
class Evaluation:
    """Metrics of one model on one held-out set, plus what the report plots need."""

    metrics: dict[str, float]
    per_head: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    classes: tuple[str, ...] = ()
    selection: dict[str, float] = field(default_factory=dict)
    """Candidate → cross-validated selection metric."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready metrics (written as ``metrics.json``)."""
        return {
            "metrics": self.metrics,
            "per_head": self.per_head,
            "confusion": self.confusion,
            "classes": list(self.classes),
            "selection": self.selection,
        }


def calibrate(scores: FloatArray, config: ThresholdConfig) -> Thresholds:
    """Thresholds of a higher-is-worse score from its values on healthy held-out windows."""
    finite = scores[np.isfinite(scores)]
    if len(finite) == 0:
        raise TrainingError("no healthy held-out windows to calibrate thresholds on")
    warning = max(float(np.quantile(finite, 1.0 - config.warning_false_alarm_rate)), config.min_warning)
    critical = max(
        float(np.quantile(finite, 1.0 - config.critical_false_alarm_rate)), config.min_critical, warning
    )
    warning, critical = min(warning, 1.0), min(critical, 1.0)
    return Thresholds(
        warning=round(warning, 6),
        critical=round(max(critical, warning), 6),
        clear=round(warning * config.clear_ratio, 6),
        target_false_alarm_rate=config.warning_false_alarm_rate,
    )


class ModelEvaluationValidation:
    """Stage 5: calibrates thresholds and measures a model on held-out windows."""

    def __init__(self, config: ThresholdConfig, on_delay_windows: int = 2) -> None:
        self._config = config
        self._on_delay = on_delay_windows

    def calibrate_heads(
        self, proba: FloatArray, windows: WindowSet, columns: dict[int, int]
    ) -> dict[int, Thresholds]:
        """Class index → thresholds, from the calibration windows whose truth mode is healthy."""
        healthy = windows.healthy if windows.healthy.any() else windows.label == 0
        return {cls: calibrate(proba[healthy, col], self._config) for cls, col in columns.items()}

    def evaluate_classifier(
        self,
        proba: FloatArray,
        windows: WindowSet,
        columns: dict[int, int],
        thresholds: dict[int, Thresholds],
    ) -> Evaluation:
        """PR-AUC, F1, recall and false alarms at the warning threshold, lead time, confusion."""
        from sklearn.metrics import average_precision_score, confusion_matrix, f1_score

        classes = windows.classes
        labels = windows.label
        full = np.zeros((len(windows), len(classes)))
        for cls, col in columns.items():
            full[:, cls] = proba[:, col]
        if 0 not in columns:
            full[:, 0] = 1.0 - full[:, 1:].sum(axis=1)
        predicted = full.argmax(axis=1)
        healthy = windows.healthy
        alarm_any = np.zeros(len(windows), dtype=bool)
        per_head: dict[str, dict[str, float]] = {}
        pr_aucs: list[float] = []
        recalls: list[float] = []
        leads: list[float] = []
        for cls, col in columns.items():
            if cls == 0:
                continue
            name = classes[cls]
            score = proba[:, col]
            over = score >= thresholds[cls].warning
            alarm_any |= over
            positive = labels == cls
            entry: dict[str, float] = {
                "positives": float(positive.sum()),
                "false_alarm_rate": float(over[healthy].mean()) if healthy.any() else float("nan"),
            }
            if positive.any():
                ap = float(average_precision_score(positive, score))
                recall = float(over[positive].mean())
                entry.update(pr_auc=ap, recall_at_warning=recall)
                pr_aucs.append(ap)
                recalls.append(recall)
            head_leads = self._lead_times(windows, cls, score >= thresholds[cls].warning)
            if head_leads:
                entry["lead_time_s_median"] = float(np.median(head_leads))
                entry["failures_alerted"] = float(sum(1 for lead in head_leads if lead > 0))
                leads.extend(head_leads)
            per_head[name] = entry
        present = sorted(set(labels.tolist()) | set(predicted.tolist()))
        metrics: dict[str, float] = {
            "windows": float(len(windows)),
            "f1_macro": float(f1_score(labels, predicted, average="macro", labels=present, zero_division=0)),
            "accuracy": float((labels == predicted).mean()),
            "pr_auc": float(np.mean(pr_aucs)) if pr_aucs else float("nan"),
            "recall_at_far": float(np.mean(recalls)) if recalls else float("nan"),
            "false_alarm_rate": float(alarm_any[healthy].mean()) if healthy.any() else float("nan"),
        }
        if leads:
            metrics["lead_time_s_median"] = float(np.median(leads))
        confusion = confusion_matrix(labels, predicted, labels=list(range(len(classes)))).tolist()
        return Evaluation(metrics=metrics, per_head=per_head, confusion=confusion, classes=classes)

    def _lead_times(self, windows: WindowSet, cls: int, over: npt.NDArray[np.bool_]) -> list[float]:
        """Per robot failing in mode `cls`: seconds between the first sustained alert and the failure."""
        leads: list[float] = []
        mode = windows.classes[cls]
        for robot in np.unique(windows.robot[windows.mode == mode]):
            idx = np.flatnonzero((windows.robot == robot) & (windows.mode == mode))
            idx = idx[np.argsort(windows.end_ts[idx], kind="stable")]
            finite = np.isfinite(windows.rul_s[idx])
            if not finite.any():
                continue
            failure_ts = float(np.min(windows.end_ts[idx][finite] + windows.rul_s[idx][finite]))
            run = np.convolve(over[idx].astype(np.int64), np.ones(self._on_delay, dtype=np.int64))[: len(idx)]
            sustained = np.flatnonzero((run >= self._on_delay) & (windows.end_ts[idx] <= failure_ts))
            leads.append(failure_ts - float(windows.end_ts[idx][sustained[0]]) if len(sustained) else 0.0)
        return leads


def regression_metrics(actual: FloatArray, predicted: FloatArray) -> dict[str, float]:
    """RMSE, MAE and the PHM 2008 score (late predictions cost more) of remaining-life estimates."""
    error = np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    score = np.where(error < 0, np.exp(-error / 13.0) - 1.0, np.exp(error / 10.0) - 1.0)
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "phm_score": float(score.sum()),
        "n": float(len(error)),
    }
