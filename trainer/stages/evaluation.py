"""ModelEvaluationValidation: calibrated thresholds and the metrics of each task.

Thresholds are calibrated on held-out windows of healthy robots: the warning
threshold is the score that this healthy data exceeds at the target false-alarm
rate (with a floor), critical uses a stricter rate, and ``clear`` sits below
warning for hysteresis. Metrics: PR-AUC, macro F1, recall and false-alarm rate at
the warning threshold, alert lead time before failure; RMSE and the PHM score for
remaining useful life.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract.manifest import Thresholds
from trainer import metrics
from trainer.config import ThresholdConfig
from trainer.errors import TrainingError
from trainer.labels import FailureEvent
from trainer.stages.preparation import WindowSet

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(slots=True)
class Evaluation:
    """Metrics of one model on one held-out set, plus what the report plots need."""

    metrics: dict[str, float]
    per_head: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    classes: tuple[str, ...] = ()
    selection: dict[str, float] = field(default_factory=dict)
    """Candidate → cross-validated selection metric."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """The per-event table (`event_table`)."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready metrics (written as ``metrics.json``)."""
        return {
            "metrics": self.metrics,
            "per_head": self.per_head,
            "confusion": self.confusion,
            "classes": list(self.classes),
            "selection": self.selection,
            "events": self.events,
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
        events: Sequence[FailureEvent] = (),
        horizon_s: float = float("inf"),
    ) -> Evaluation:
        """PR-AUC, F1, recall at the target false-alarm rate and at warning, the per-event table, confusion.

        Metrics follow `trainer.metrics`; `events` (the test data's failures) make the
        per-event table (`event_table`) and the lead time over all of them.
        """
        from sklearn.metrics import confusion_matrix

        classes = windows.classes
        labels = windows.label
        full = np.zeros((len(windows), len(classes)))
        for cls, col in columns.items():
            full[:, cls] = proba[:, col]
        if 0 not in columns:
            full[:, 0] = 1.0 - full[:, 1:].sum(axis=1)
        predicted = full.argmax(axis=1)
        healthy = windows.healthy
        scored = sorted(columns)
        over: dict[str, BoolArray] = {}
        per_head: dict[str, dict[str, float]] = {}
        for cls in scored:
            if cls == 0:
                continue
            name = classes[cls]
            over[name] = full[:, cls] >= thresholds[cls].warning
            positive = labels == cls
            entry: dict[str, float] = {
                "positives": float(positive.sum()),
                "false_alarm_rate": float(over[name][healthy].mean()) if healthy.any() else float("nan"),
                "pr_auc": metrics.pr_auc(labels, full, [cls]),
            }
            if positive.any():
                entry["recall_at_warning"] = float(over[name][positive].mean())
            per_head[name] = entry
        alarm_any = np.logical_or.reduce(list(over.values())) if over else np.zeros(len(windows), dtype=bool)
        positive_any = labels > 0
        far = self._config.warning_false_alarm_rate
        metric_values: dict[str, float] = {
            "windows": float(len(windows)),
            "pr_auc": metrics.pr_auc(labels, full, scored),
            "f1_macro": metrics.f1_macro(labels, full),
            "accuracy": float((labels == predicted).mean()),
            "recall_at_far": metrics.recall_at_far(labels, full, scored, far),
            "recall_at_warning": float(alarm_any[positive_any].mean())
            if positive_any.any()
            else float("nan"),
            "false_alarm_rate": float(alarm_any[healthy].mean()) if healthy.any() else float("nan"),
        }
        table = event_table(windows, over, events, horizon_s, self._on_delay)
        metric_values.update(event_summary(table, windows))
        for name, entry in per_head.items():
            mine = [row for row in table if row["mode"] == name]
            entry["events"] = float(len(mine))
            entry["events_detected"] = float(sum(1 for row in mine if row["detected"]))
        confusion = confusion_matrix(labels, predicted, labels=list(range(len(classes)))).tolist()
        return Evaluation(
            metrics=metric_values,
            per_head=per_head,
            confusion=confusion,
            classes=classes,
            events=table,
        )


def sustained(over: BoolArray, on_delay: int) -> BoolArray:
    """Windows at which the last `on_delay` windows were all over the threshold (the alert policy's delay)."""
    run = np.convolve(over.astype(np.int64), np.ones(on_delay, dtype=np.int64))[: len(over)]
    return run >= on_delay


def _runs(on: BoolArray, times: FloatArray) -> list[tuple[float, float]]:
    """(start, end) times of each run of consecutive True windows."""
    padded = np.concatenate(([False], on, [False]))
    starts = np.flatnonzero(padded[1:-1] & ~padded[:-2])
    ends = np.flatnonzero(padded[1:-1] & ~padded[2:])
    return [(float(times[a]), float(times[b])) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]


def event_table(
    windows: WindowSet,
    over: dict[str, BoolArray],
    events: Sequence[FailureEvent],
    horizon_s: float,
    on_delay: int = 2,
) -> list[dict[str, Any]]:
    """One row per failure event of the test data, and one per robot for the alarms after its last event.

    An alert is a run of windows on which a head's score stayed over its warning threshold
    for `on_delay` windows in a row (of any head). An event is detected when an alert is on
    at a window ending in the `horizon_s` before its onset; its lead time is the onset minus
    the start of the earliest such alert (which may have begun before the horizon). Alerts
    that start after the previous event of that robot and end before this event's horizon
    are its false alarms. Rows: robot, onset, mode, detected, lead_time_s, first_head,
    false_alarms.
    """
    rows: list[dict[str, Any]] = []
    by_robot: dict[str, list[FailureEvent]] = {}
    for event in events:
        by_robot.setdefault(event.robot, []).append(event)
    for robot in sorted(set(np.unique(windows.robot).tolist()) | set(by_robot)):
        idx = np.flatnonzero(windows.robot == robot)
        idx = idx[np.argsort(windows.end_ts[idx], kind="stable")]
        times = windows.end_ts[idx]
        alerts = sorted(
            (start, end, head)
            for head, flags in over.items()
            for start, end in _runs(sustained(flags[idx], on_delay), times)
        )
        previous = -np.inf
        for event in sorted(by_robot.get(robot, []), key=lambda e: e.onset):
            window_start = event.onset - horizon_s
            catching = [a for a in alerts if a[1] >= window_start and a[0] <= event.onset and a[1] > previous]
            false = {(a[0], a[1]) for a in alerts if previous < a[0] and a[1] < window_start}
            first = min(catching) if catching else None
            rows.append(
                {
                    "robot": robot,
                    "onset": event.onset,
                    "mode": event.mode,
                    "detected": first is not None,
                    "lead_time_s": (event.onset - first[0]) if first else None,
                    "first_head": first[2] if first else None,
                    "false_alarms": len(false),
                }
            )
            previous = event.onset
        trailing = {(a[0], a[1]) for a in alerts if a[0] > previous}
        if trailing:
            rows.append(
                {
                    "robot": robot,
                    "onset": None,
                    "mode": None,
                    "detected": False,
                    "lead_time_s": None,
                    "first_head": None,
                    "false_alarms": len(trailing),
                }
            )
    return rows


def event_summary(table: Sequence[dict[str, Any]], windows: WindowSet) -> dict[str, float]:
    """Events, detected events, lead time over all detected events, false alarms (and per monitored hour)."""
    failures = [row for row in table if row["onset"] is not None]
    leads = [float(row["lead_time_s"]) for row in failures if row["detected"]]
    false_alarms = sum(int(row["false_alarms"]) for row in table)
    hours = 0.0
    for robot in np.unique(windows.robot).tolist():
        times = windows.end_ts[windows.robot == robot]
        hours += float(times.max() - times.min()) / 3600.0
    summary = {
        "events": float(len(failures)),
        "events_detected": float(len(leads)),
        "false_alarms": float(false_alarms),
        "false_alarms_per_hour": false_alarms / hours if hours > 0 else float("nan"),
    }
    if failures:
        summary["event_detection_rate"] = len(leads) / len(failures)
    if leads:
        summary["lead_time_s_median"] = float(np.median(leads))
        summary["lead_time_s_mean"] = float(np.mean(leads))
    return summary


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
