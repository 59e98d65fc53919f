"""The one definition of each metric: training, `robotpm-train list` and the promotion gate use these.

Classifier metrics take the class index of each window (`labels`, 0 = healthy) and a
probability matrix `full` with one column per class index; `scored` names the classes the
model has a score (head) for. A class without positives, or with nothing but positives,
has no precision-recall curve and is left out of the means.

- ``pr_auc``: the mean over scored classes of the average precision of that class's score
  against "the window is of that class" (scikit-learn's `average_precision_score`);
- ``f1_macro``: macro F1 of the argmax class over the classes present in the labels or the
  predictions;
- ``recall_at_far``: per scored class, the recall at the threshold that healthy windows
  exceed at the target false-alarm rate (their ``1 - far`` quantile), averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

HIGHER_IS_BETTER: dict[str, bool] = {
    "pr_auc": True,
    "f1_macro": True,
    "recall_at_far": True,
    "rmse": False,
    "phm_score": False,
}
"""Every selection metric and whether a higher value is better."""


def _curves(labels: IntArray, scored: Sequence[int]) -> list[int]:
    """The scored classes that have both positives and negatives."""
    return [c for c in scored if c != 0 and (labels == c).any() and not (labels == c).all()]


def pr_auc(labels: IntArray, full: FloatArray, scored: Sequence[int]) -> float:
    """Mean average precision over the scored failure classes; see the module."""
    from sklearn.metrics import average_precision_score

    values = [float(average_precision_score(labels == c, full[:, c])) for c in _curves(labels, scored)]
    return float(np.mean(values)) if values else float("nan")


def f1_macro(labels: IntArray, full: FloatArray) -> float:
    """Macro F1 of the argmax class; see the module."""
    from sklearn.metrics import f1_score

    predicted = full.argmax(axis=1)
    present = sorted(set(labels.tolist()) | set(predicted.tolist()))
    return float(f1_score(labels, predicted, average="macro", labels=present, zero_division=0))


def recall_at_far(
    labels: IntArray, full: FloatArray, scored: Sequence[int], false_alarm_rate: float
) -> float:
    """Mean recall at the healthy windows' ``1 - false_alarm_rate`` score quantile; see the module."""
    healthy = labels == 0
    if not healthy.any():
        return float("nan")
    values = []
    for c in _curves(labels, scored):
        threshold = float(np.quantile(full[healthy, c], 1.0 - false_alarm_rate))
        values.append(float((full[labels == c, c] > threshold).mean()))
    return float(np.mean(values)) if values else float("nan")


def classifier_metric(
    name: str, labels: IntArray, full: FloatArray, scored: Sequence[int], false_alarm_rate: float
) -> float:
    """The classifier metric called `name` (``pr_auc``, ``f1_macro`` or ``recall_at_far``)."""
    if name == "pr_auc":
        return pr_auc(labels, full, scored)
    if name == "f1_macro":
        return f1_macro(labels, full)
    if name == "recall_at_far":
        return recall_at_far(labels, full, scored, false_alarm_rate)
    raise ValueError(f"{name!r} is not a classifier metric")
