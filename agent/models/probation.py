"""Probation: a verified newer model is shadow-scored before it drives alerts; no candidate skips it.

The model slot only offers a candidate that loaded and passed its golden test. That
proves it computes what its trainer said on a few vectors, not that it behaves on this
robot's data. So, when ``model.probation_windows`` > 0, the daemon does not swap the
candidate in at once: each stream's pipeline hands every window it scores with the
current model, and every batch of samples it parsed, to a `Probation`
(`StreamPipeline.set_shadow`). Alerts still come from the current model only.

A candidate with the current model's feature spec scores the very same features. One
with another spec (another hop, window, statistics, channels or sample grid) cuts its own
windows from the same parsed samples with its own `StreamingFeaturizer` (and resampler),
so it is judged on the same lines, never swapped in unjudged.

Windows the candidate scored are counted across all streams. The probation ends once
``probation_windows`` of them were scored AND ``probation_min_s`` seconds have passed on
probation (summed over restarts: the lifecycle persists `state`). It fails (the candidate
is rolled back, never used, and remembered as refused by the slot) as soon as the
candidate's scoring raises, returns a non-finite value, or lacks an output column one of
its heads reads; or, at the end: if the candidate would alert far more often than the
current model (the share of its windows reaching a warning threshold of any head is
above ``probation_max_alert_rate`` and also above the current model's share of its own
windows by more than ``probation_alert_margin``), or if its mean scoring call took longer
than ``probation_max_latency_ms``. Rate and latency are judged at the end, over all
probation windows, so a short burst at the start does not decide them.

The shadow only runs while a probation is open: outside it the pipeline's cost is one
``is None`` check per block.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from agent.contract.features import StreamingFeaturizer
from agent.contract.manifest import ModelManifest
from agent.contract.streams import StreamConfig
from agent.seams import Scorer
from agent.streams.sampling import StreamSampling

log = structlog.get_logger("robotpm.model")

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class Probation:
    """One candidate's probation against the current model; fed by every stream pipeline.

    ``probation(features, current_scores)`` takes each window batch the current model
    scored; ``probation.samples(...)`` takes each stream's parsed samples, which a candidate
    with another feature spec cuts into its own windows. Neither raises: whatever goes wrong
    with the candidate becomes `failure`. Once `failure` is set or `finished` is true,
    further calls do nothing.
    """

    __slots__ = (
        "_calls",
        "_candidate_alerts",
        "_clock",
        "_current",
        "_current_alerts",
        "_current_windows",
        "_elapsed_before",
        "_failure",
        "_judged",
        "_margin",
        "_max_latency_s",
        "_max_rate",
        "_min_s",
        "_own",
        "_score_s",
        "_started",
        "_target",
        "_windows",
        "candidate",
        "own_spec",
    )

    def __init__(
        self,
        candidate: Scorer,
        current: ModelManifest,
        *,
        windows: int,
        max_alert_rate: float,
        alert_margin: float,
        min_s: float = 0.0,
        max_latency_ms: float = float("inf"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if windows < 1:
            raise ValueError(f"a probation needs at least one window, got {windows}")
        self.candidate = candidate
        self.own_spec = candidate.manifest.feature_spec_hash != current.feature_spec_hash
        """Whether the candidate cuts its own windows (another feature spec) from the streams' samples."""
        self._current = current
        self._target = windows
        self._min_s = min_s
        self._max_rate = max_alert_rate
        self._margin = alert_margin
        self._max_latency_s = max_latency_ms / 1e3
        self._clock = clock
        self._started = clock()
        self._elapsed_before = 0.0
        self._windows = 0
        self._candidate_alerts = 0
        self._current_windows = 0
        self._current_alerts = 0
        self._score_s = 0.0
        self._calls = 0
        self._own: dict[str, _OwnWindows] = {}
        self._failure: str | None = None
        self._judged = False

    def __repr__(self) -> str:
        return (
            f"Probation({self.candidate.manifest.label} vs {self._current.label}: "
            f"{self._windows}/{self._target} windows)"
        )

    @property
    def windows(self) -> int:
        """Windows the candidate shadow-scored so far (all streams)."""
        return self._windows

    @property
    def elapsed_s(self) -> float:
        """Seconds on probation, summed over agent runs (time the agent was down does not count)."""
        return self._elapsed_before + self._clock() - self._started

    @property
    def failure(self) -> str | None:
        """Why the candidate must be rolled back, or None while it behaves."""
        self._decide()
        return self._failure

    @property
    def finished(self) -> bool:
        """Whether the probation has decided: failed, or ended after enough windows AND enough time."""
        return self._decide()

    def _decide(self) -> bool:
        """Whether it has decided; judges rate and latency the first time both minimums are met."""
        if self._failure is not None:
            return True
        if self._windows < self._target or self.elapsed_s < self._min_s:
            return False
        if not self._judged:
            self._judged = True
            self._judge_end()
        return True

    @property
    def rates(self) -> tuple[float, float]:
        """Share of windows reaching a warning threshold: (candidate, current model), each of its own."""
        candidate = self._candidate_alerts / self._windows if self._windows else 0.0
        current = self._current_alerts / self._current_windows if self._current_windows else 0.0
        return candidate, current

    @property
    def latency_ms(self) -> float:
        """Mean milliseconds of one candidate scoring call so far."""
        return self._score_s / self._calls * 1e3 if self._calls else 0.0

    def state(self) -> dict[str, Any]:
        """What a restart needs to continue this probation (JSON data; see `restore`)."""
        manifest = self.candidate.manifest
        return {
            "model": manifest.label,
            "sha256": manifest.sha256,
            "against": self._current.label,
            "windows": self._windows,
            "candidate_alerts": self._candidate_alerts,
            "current_windows": self._current_windows,
            "current_alerts": self._current_alerts,
            "elapsed_s": self.elapsed_s,
            "score_s": self._score_s,
            "calls": self._calls,
        }

    def restore(self, state: Mapping[str, Any]) -> bool:
        """Continue from `state` if it is this candidate's against this current model; whether it was."""
        manifest = self.candidate.manifest
        if (
            state.get("model") != manifest.label
            or state.get("sha256") != manifest.sha256
            or state.get("against") != self._current.label
        ):
            return False
        try:
            counts = {
                k: int(state[k])
                for k in ("windows", "candidate_alerts", "current_windows", "current_alerts", "calls")
            }
            elapsed, score_s = float(state["elapsed_s"]), float(state["score_s"])
        except (KeyError, TypeError, ValueError):
            return False
        if min(*counts.values(), elapsed, score_s) < 0 or not np.isfinite([elapsed, score_s]).all():
            return False
        self._windows, self._calls = counts["windows"], counts["calls"]
        self._candidate_alerts, self._current_alerts = counts["candidate_alerts"], counts["current_alerts"]
        self._current_windows = counts["current_windows"]
        self._elapsed_before, self._score_s = elapsed, score_s
        self._started = self._clock()
        return True

    def samples(
        self, stream: StreamConfig, channels: Sequence[str], timestamps: FloatArray, values: FloatArray
    ) -> None:
        """Take a stream's parsed samples (columns named by `channels`); used when the spec differs."""
        if not self.own_spec or self.finished or not len(values):
            return
        own = self._own.get(stream.name)
        try:
            if own is None:
                own = self._own[stream.name] = _OwnWindows(stream, channels, self.candidate.manifest)
            features = own.push(timestamps, values)
        except Exception as exc:  # a candidate that cannot cut windows here fails, the stream goes on
            self._failure = f"cannot cut its windows from stream {stream.name}: {exc}"
            return
        if len(features):
            self._shadow_score(features)

    def __call__(self, features: FloatArray, current_scores: Any) -> None:
        """Take the current model's windows and scores; score the same features if the spec is equal."""
        if self.finished or not len(features):
            return
        n = len(features)
        try:
            current_over = _over_warning(self._current, current_scores, n, check=False)
        except _BadOutput:  # the current model's own problems are not the candidate's fault
            current_over = np.zeros(n, dtype=bool)
        self._current_windows += n
        self._current_alerts += int(current_over.sum())
        if not self.own_spec:
            self._shadow_score(features)

    def _shadow_score(self, features: FloatArray) -> None:
        started = time.perf_counter()
        try:
            scores = self.candidate.score(features)
        except Exception as exc:  # onnxruntime raises its own types; any of them fails the candidate
            self._failure = f"scoring raised {type(exc).__name__}: {exc}"
            return
        self._score_s += time.perf_counter() - started
        self._calls += 1
        try:
            over = _over_warning(self.candidate.manifest, scores, len(features), check=True)
        except _BadOutput as exc:
            self._failure = str(exc)
            return
        self._windows += len(features)
        self._candidate_alerts += int(over.sum())

    def _judge_end(self) -> None:
        candidate, current = self.rates
        if candidate > self._max_rate and candidate > current + self._margin:
            self._failure = (
                f"alert storm: warning threshold reached on {candidate:.0%} of {self._windows} probation "
                f"windows (current model {current:.0%}; bound {self._max_rate:.0%} and current + "
                f"{self._margin:.0%})"
            )
        elif self.latency_ms > self._max_latency_s * 1e3:
            self._failure = (
                f"too slow: {self.latency_ms:.1f} ms per scoring call on average over {self._calls} calls "
                f"(bound {self._max_latency_s * 1e3:.1f} ms)"
            )


class _OwnWindows:
    """One stream's windows cut with a candidate's own feature spec (and sampling grid)."""

    __slots__ = ("_columns", "_featurizer", "_sampling")

    def __init__(self, stream: StreamConfig, channels: Sequence[str], manifest: ModelManifest) -> None:
        names = list(channels)
        self._columns = np.array([names.index(c) for c in manifest.feature_spec.channels])
        self._sampling = StreamSampling(stream, manifest)
        self._featurizer = StreamingFeaturizer(manifest.feature_spec)

    def push(self, timestamps: FloatArray, values: FloatArray) -> FloatArray:
        rows = np.zeros(len(timestamps), dtype=np.int64)
        _, grid, _, _ = self._sampling.take(timestamps, values[:, self._columns], rows, rows)
        return self._featurizer.push(grid).features


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
