"""Sample rates: what a model's windows assume, how a stream's rate is measured, and resampling.

A model's feature spec may carry a `Sampling`: the rate its windows were cut at
(samples per second), the jitter it tolerates and the longest gap resampling may
bridge. Windows count samples, so a model trained at 50 Hz that meets a 10 Hz log
sees windows five times as long as it learned: the agent measures each stream
(`RateMonitor`, the same measure as `measure_rate`) and either reports the
mismatch or resamples the stream onto the model's grid.

Measure: the rate is one over the median interval between consecutive samples
(intervals that are not positive are left out); the jitter is the intervals'
standard deviation over that median.

Resampling (`resample` for a whole history, `StreamingResampler` chunk by chunk,
equal for any chunking: a tested property) puts a stream onto the grid
``t0 + k / rate_hz`` anchored at its first sample. Each grid point between two
consecutive samples ``a < b`` (``t_a < g <= t_b``) gets the linear interpolation of
the two, unless they are more than ``max_gap_s`` apart: grid points inside a logging
gap are left out, never invented (one exactly on the sample after the gap is kept).
A sample that is not later than every sample before it is skipped (the grid never
runs backwards). Every grid point names the sample that completed it (``b``), so
the agent can say which log lines a window came from.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

RateVerdict = Literal["unknown", "ok", "rate_mismatch", "jitter"]

MONITOR_INTERVALS: Final = 256
"""A stream's rate is judged on its last this many intervals."""
MIN_INTERVALS: Final = 32
"""Fewer intervals than this give the verdict ``unknown``."""


class Sampling(BaseModel):
    """The sample rate a model's windows assume, and how far a stream may stray from it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_hz: float = Field(gt=0, le=1_000_000, description="Samples per second the windows were cut at.")
    rate_tolerance: float = Field(
        default=0.02, ge=0, lt=1, description="Tolerated relative difference of a stream's measured rate."
    )
    jitter: float = Field(
        default=0.25, ge=0, description="Tolerated std of a stream's sample intervals over their median."
    )
    max_gap_s: float = Field(default=1.0, gt=0, description="Resampling never bridges a longer gap.")

    def judge(self, rate_hz: float, jitter: float) -> RateVerdict:
        """Whether a measured rate and jitter fit (``ok``), and if not, which does not."""
        if not (math.isfinite(rate_hz) and math.isfinite(jitter)):
            return "unknown"
        if abs(rate_hz / self.rate_hz - 1.0) > self.rate_tolerance:
            return "rate_mismatch"
        return "jitter" if jitter > self.jitter else "ok"


@dataclass(frozen=True, slots=True)
class RateMeasure:
    """A measured sample rate and jitter (NaN when there are no positive intervals)."""

    rate_hz: float
    jitter: float
    intervals: int


def measure_rate(timestamps: npt.ArrayLike) -> RateMeasure:
    """The rate (one over the median positive interval) and jitter (their std over the median)."""
    intervals = np.diff(np.asarray(timestamps, dtype=np.float64))
    return _measure(intervals[intervals > 0])


def _measure(intervals: FloatArray) -> RateMeasure:
    if not len(intervals):
        return RateMeasure(float("nan"), float("nan"), 0)
    median = float(np.median(intervals))
    return RateMeasure(1.0 / median, float(np.std(intervals)) / median, len(intervals))


class RateMonitor:
    """A stream's rate and jitter over its last `MONITOR_INTERVALS` intervals, for any chunking."""

    __slots__ = ("_intervals", "_last")

    def __init__(self) -> None:
        self._intervals: deque[float] = deque(maxlen=MONITOR_INTERVALS)
        self._last: float | None = None

    def push(self, timestamps: FloatArray) -> None:
        """Take the timestamps of new samples, in stream order."""
        ts = np.asarray(timestamps, dtype=np.float64)
        if not len(ts):
            return
        joined = ts if self._last is None else np.concatenate(([self._last], ts))
        intervals = np.diff(joined)
        self._intervals.extend(intervals[intervals > 0][-MONITOR_INTERVALS:].tolist())
        self._last = float(ts[-1])

    def measure(self) -> RateMeasure:
        """The rate and jitter of the intervals kept."""
        return _measure(np.fromiter(self._intervals, dtype=np.float64, count=len(self._intervals)))

    def verdict(self, sampling: Sampling | None) -> RateVerdict:
        """``unknown`` without a model rate or with too few intervals, else `Sampling.judge`."""
        if sampling is None or len(self._intervals) < MIN_INTERVALS:
            return "unknown"
        measure = self.measure()
        return sampling.judge(measure.rate_hz, measure.jitter)

    def state(self) -> dict[str, Any]:
        """JSON-able state, to resume with the same verdicts."""
        return {"intervals": list(self._intervals), "last": self._last}

    def restore(self, state: dict[str, Any] | None) -> None:
        """Resume from `state` (None: start fresh)."""
        self._intervals.clear()
        self._last = None
        if state:
            self._intervals.extend(float(v) for v in state.get("intervals", ())[-MONITOR_INTERVALS:])
            last = state.get("last")
            self._last = None if last is None else float(last)


@dataclass(frozen=True, slots=True)
class Resampled:
    """Samples on the grid: timestamps, values, and for each the row of the sample that completed it."""

    timestamps: FloatArray
    values: FloatArray
    source_rows: IntArray
    """Rows into the samples given; a grid point completed by an earlier call's sample is never returned."""

    def __len__(self) -> int:
        return len(self.timestamps)


def _grid_count(ts: FloatArray, t0: float, period: float) -> IntArray:
    """For each timestamp, how many grid points ``t0 + k * period`` are at or before it."""
    guess = np.floor((ts - t0) / period).astype(np.int64) + 1
    guess = np.maximum(guess, 0)
    # float rounding can put the guess one off either way: settle it against the grid points themselves
    guess = np.where(t0 + guess * period <= ts, guess + 1, guess)
    return np.where((guess > 0) & (t0 + (guess - 1) * period > ts), guess - 1, guess)


def _resample_pairs(
    t0: float,
    sampling: Sampling,
    ts: FloatArray,
    values: FloatArray,
    before_count: int,
) -> tuple[FloatArray, FloatArray, IntArray]:
    """Grid points of the consecutive pairs of ``ts`` (strictly increasing), from `before_count` on.

    Each grid point's row is the index in `ts` of its pair's later sample.
    """
    period = 1.0 / sampling.rate_hz
    counts = _grid_count(ts, t0, period)
    lo, hi = counts[:-1], counts[1:]  # pair i (samples i, i + 1) owns grid points lo[i] .. hi[i] - 1
    lo = np.maximum(lo, before_count)
    hi = np.maximum(hi, lo)
    gaps = np.diff(ts) > sampling.max_gap_s
    # across a gap only a grid point exactly on the later sample is kept: measured, not invented
    on_sample = (hi > lo) & (t0 + (hi - 1) * period == ts[1:])
    first = np.where(gaps, hi - 1, lo)
    n = np.where(gaps, on_sample.astype(np.int64), hi - lo)
    total = int(n.sum())
    if total == 0:
        return np.empty(0), np.empty((0, values.shape[1])), np.empty(0, dtype=np.int64)
    pair = np.repeat(np.arange(len(n), dtype=np.int64), n)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
    k = first[pair] + offsets
    grid = t0 + k * period
    ta, tb = ts[pair], ts[pair + 1]
    fraction = ((grid - ta) / (tb - ta))[:, None]
    va, vb = values[pair], values[pair + 1]
    return grid, va + (vb - va) * fraction, pair + 1


def _increasing(ts: FloatArray, after: float | None) -> npt.NDArray[np.bool_]:
    """Which samples are later than every sample before them (and than `after`)."""
    if not len(ts):
        return np.zeros(0, dtype=bool)
    previous = np.maximum.accumulate(np.concatenate(([-np.inf if after is None else after], ts[:-1])))
    return ts > previous


def resample(timestamps: npt.ArrayLike, values: npt.ArrayLike, sampling: Sampling) -> Resampled:
    """A whole history on the grid anchored at its first sample (see the module docstring)."""
    return StreamingResampler(sampling).push(timestamps, values)


@dataclass(slots=True)
class ResamplerState:
    """What a `StreamingResampler` needs to resume: the grid anchor and the last sample kept."""

    t0: float | None
    last_ts: float | None
    last_values: tuple[float, ...] | None
    emitted: int
    """Grid points emitted or passed (in gaps) so far."""


class StreamingResampler:
    """Resamples a stream chunk by chunk onto one grid, equal to `resample` of the whole."""

    __slots__ = ("_emitted", "_last_ts", "_last_values", "_sampling", "_t0")

    def __init__(self, sampling: Sampling) -> None:
        self._sampling = sampling
        self._t0: float | None = None
        self._last_ts: float | None = None
        self._last_values: FloatArray | None = None
        self._emitted = 0

    @property
    def sampling(self) -> Sampling:
        """The grid's rate and gap rule."""
        return self._sampling

    def push(self, timestamps: npt.ArrayLike, values: npt.ArrayLike) -> Resampled:
        """Take samples (stream order, ``values`` shaped ``(n, channels)``); the grid points they complete."""
        ts = np.asarray(timestamps, dtype=np.float64)
        vals = np.asarray(values, dtype=np.float64)
        if vals.ndim != 2 or len(vals) != len(ts):
            raise ValueError(f"expected values of shape ({len(ts)}, channels), got {vals.shape}")
        rows = np.flatnonzero(_increasing(ts, self._last_ts))
        empty = Resampled(np.empty(0), np.empty((0, vals.shape[1])), np.empty(0, dtype=np.int64))
        if not len(rows):
            return empty
        kept_ts, kept_values = ts[rows], vals[rows]
        first: list[Resampled] = []
        if self._t0 is None:  # the first sample is the grid's first point
            self._t0 = float(kept_ts[0])
            first.append(Resampled(kept_ts[:1].copy(), kept_values[:1].copy(), rows[:1].copy()))
            self._emitted = 1
            pair_ts, pair_values, base = kept_ts, kept_values, 0
        else:
            assert self._last_ts is not None
            assert self._last_values is not None
            pair_ts = np.concatenate(([self._last_ts], kept_ts))
            pair_values = np.concatenate((self._last_values[None, :], kept_values))
            base = 1  # pair_ts[0] is the previous call's sample
        grid, grid_values, owner = _resample_pairs(
            self._t0, self._sampling, pair_ts, pair_values, self._emitted
        )
        self._emitted = max(
            self._emitted, int(_grid_count(pair_ts[-1:], self._t0, 1.0 / self._sampling.rate_hz)[0])
        )
        self._last_ts = float(kept_ts[-1])
        self._last_values = kept_values[-1].copy()
        out = Resampled(grid, grid_values, rows[owner - base])
        if first:
            return Resampled(
                np.concatenate([first[0].timestamps, out.timestamps]),
                np.concatenate([first[0].values, out.values]),
                np.concatenate([first[0].source_rows, out.source_rows]),
            )
        return out

    def state(self) -> ResamplerState:
        """A copy of what is needed to resume exactly."""
        return ResamplerState(
            self._t0,
            self._last_ts,
            None if self._last_values is None else tuple(float(v) for v in self._last_values),
            self._emitted,
        )

    @classmethod
    def from_state(cls, sampling: Sampling, state: ResamplerState) -> StreamingResampler:
        """Rebuild a resampler from a saved `ResamplerState`."""
        resampler = cls(sampling)
        resampler._t0 = state.t0
        resampler._last_ts = state.last_ts
        resampler._last_values = (
            None if state.last_values is None else np.asarray(state.last_values, dtype=np.float64)
        )
        resampler._emitted = state.emitted
        return resampler
