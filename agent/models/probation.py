"""Probation: a verified newer model is shadow-scored before it drives alerts.

The model slot only offers a candidate that loaded and passed its golden test. That
proves it computes what its trainer said on a few vectors, not that it behaves on this
robot's data. So, when ``model.probation_windows`` > 0, the daemon does not swap the
candidate in at once: each stream's pipeline hands every window it scores with the
current model to a `Probation` too (`StreamPipeline.set_shadow`), which scores the same
features with the candidate. Alerts still come from the current model only.

Windows are counted across all streams. After ``probation_windows`` of them the
probation ends clean and the daemon swaps the candidate in at the next window boundary,
as it would without probation. It fails (the candidate is rolled back, never used, and
remembered as refused by the slot) as soon as the candidate's scoring raises, returns a
non-finite value, or lacks an output column one of its heads reads; or, at the end, if
the candidate would alert far more often than the current model: the share of windows
on which it reaches a warning threshold of any head is above
``probation_max_alert_rate`` and also above the current model's share on the same
windows by more than ``probation_alert_margin``. The rate test is only made at the end,
over all probation windows, so a short burst at the start does not decide it.

The shadow only runs while a probation is open: outside it the pipeline's cost is one
``is None`` check per block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from agent.contract.manifest import ModelManifest
from agent.seams import Scorer

log = structlog.get_logger("robotpm.model")

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class Probation:
    """One candidate's probation against the current model; call it with each scored window batch.

    ``probation(features, current_scores)`` never raises: whatever goes wrong with the
    candidate becomes `failure`. Once `failure` is set or `finished` is true, further calls
    do nothing.
    """

    __slots__ = (
        "_candidate_alerts",
        "_current",
        "_current_alerts",
        "_failure",
        "_margin",
        "_max_rate",
        "_target",
        "_windows",
        "candidate",
    )

    def __init__(
        self,
        candidate: Scorer,
        current: ModelManifest,
        *,
        windows: int,
        max_alert_rate: float,
        alert_margin: float,
    ) -> None:
        if windows < 1:
            raise ValueError(f"a probation needs at least one window, got {windows}")
        self.candidate = candidate
        self._current = current
        self._target = windows
        self._max_rate = max_alert_rate
        self._margin = alert_margin
        self._windows = 0
        self._candidate_alerts = 0
        self._current_alerts = 0
        self._failure: str | None = None

    def __repr__(self) -> str:
        return (
            f"Probation({self.candidate.manifest.label} vs {self._current.label}: "
            f"{self._windows}/{self._target} windows)"
        )

    @property
    def windows(self) -> int:
        """Windows shadow-scored so far (all streams)."""
        return self._windows

    @property
    def failure(self) -> str | None:
        """Why the candidate must be rolled back, or None while it behaves."""
        return self._failure

    @property
    def finished(self) -> bool:
        """Whether the probation has decided: failed, or ended clean after enough windows."""
        return self._failure is not None or self._windows >= self._target

    @property
    def rates(self) -> tuple[float, float]:
        """Share of probation windows reaching a warning threshold: (candidate, current)."""
        if not self._windows:
            return 0.0, 0.0
        return self._candidate_alerts / self._windows, self._current_alerts / self._windows

    def __call__(self, features: FloatArray, current_scores: Any) -> None:
        """Score `features` with the candidate and compare with the current model's `current_scores`."""
        if self.finished or not len(features):
            return
        try:
            scores = self.candidate.score(features)
        except Exception as exc:  # onnxruntime raises its own types; any of them fails the candidate
            self._failure = f"scoring raised {type(exc).__name__}: {exc}"
            return
        n = len(features)
        try:
            candidate_over = _over_warning(self.candidate.manifest, scores, n, check=True)
        except _BadOutput as exc:
            self._failure = str(exc)
            return
        try:
            current_over = _over_warning(self._current, current_scores, n, check=False)
        except _BadOutput:  # the current model's own problems are not the candidate's fault
            current_over = np.zeros(n, dtype=bool)
        self._windows += n
        self._candidate_alerts += int(candidate_over.sum())
        self._current_alerts += int(current_over.sum())
        if self._windows >= self._target:
            self._judge_rates()

    def _judge_rates(self) -> None:
        candidate, current = self.rates
        if candidate > self._max_rate and candidate > current + self._margin:
            self._failure = (
                f"alert storm: warning threshold reached on {candidate:.0%} of {self._windows} probation "
                f"windows (current model {current:.0%}; bound {self._max_rate:.0%} and current + "
                f"{self._margin:.0%})"
            )


class _BadOutput(Exception):
    """The model's outputs cannot be read as its heads say."""


def _over_warning(manifest: ModelManifest, scores: Any, n: int, *, check: bool) -> BoolArray:
    """Per window, whether any head of `manifest` reaches its warning threshold.

    With ``check``, missing outputs, wrong shapes and non-finite values raise `_BadOutput`
    (a non-finite score in a column no head reads is an error too: the model is broken).
    """
    if not isinstance(scores, Mapping):
        raise _BadOutput(f"scores are a {type(scores).__name__}, not outputs by name")
    over = np.zeros(n, dtype=bool)
    for head in manifest.heads:
        raw = scores.get(head.output)
        if raw is None:
            raise _BadOutput(f"no output {head.output!r}")
        array = np.asarray(raw, dtype=np.float64)
        if array.ndim != 2 or array.shape[0] != n or array.shape[1] <= head.column:
            raise _BadOutput(
                f"output {head.output!r} has shape {array.shape}, expected ({n}, > {head.column})"
            )
        if check and not np.isfinite(array).all():
            raise _BadOutput(f"output {head.output!r} has non-finite values")
        column = array[:, head.column]
        t = head.thresholds
        if head.direction == "higher_is_worse":
            over |= column >= t.warning
        else:
            over |= column <= t.warning
    return over
