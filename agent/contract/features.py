"""The feature spec and its one numpy implementation, shared by training and scoring.

A stream of samples (rows of canonical channels) is cut into windows of `window`
samples, one window every `hop` samples: window k covers samples
``[k * hop, k * hop + window)``. Each window becomes one feature vector: for every
channel, in order, every statistic, in order (`FeatureSpec.feature_names`).

A spec may carry the `Sampling` its windows assume (the rate, the jitter it
tolerates, the longest gap resampling bridges), and may give the window and hop in
seconds (``window_s``, ``hop_s``) instead of samples: they are then whole numbers of
samples at that rate (rounded), and the stream is cut on the rate's grid
(`agent.contract.sampling`). The windows themselves always count samples, so one
implementation serves both kinds of spec.

The trainer calls `batch_features` on a whole history; the agent feeds a
`StreamingFeaturizer` chunk by chunk. Both compute the statistics with the same
code, chosen by the spec alone, and a window's value depends on its own samples
only, so their results agree for any chunking (a tested property); the spec hash
written into every model manifest lets the agent refuse a model built for other
features. `window_statistics` computes the same statistics for a stack of windows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.contract.sampling import Sampling

Statistic = Literal["mean", "std", "min", "max", "rms", "ptp", "slope", "last"]
"""A per-channel statistic of one window.

``slope`` is the least-squares trend per sample; ``ptp`` is max minus min;
``last`` is the newest sample of the window.
"""

ALL_STATISTICS: tuple[Statistic, ...] = ("mean", "std", "min", "max", "rms", "ptp", "slope", "last")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class FeatureSpec(BaseModel):
    """How windows are cut and which statistics describe them.

    Example::

        spec = FeatureSpec(channels=("j1_current", "j1_temp"), window=64, hop=32,
                           statistics=("mean", "std", "slope"))
        spec.feature_names()[:2]  # ('j1_current__mean', 'j1_current__std')

        timed = FeatureSpec(channels=("j1_current",), window_s=8.0, hop_s=2.0,
                            sampling=Sampling(rate_hz=50.0))
        (timed.window, timed.hop)  # (400, 100)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(default=1, ge=1, description="Version of the feature code contract.")
    channels: tuple[str, ...] = Field(min_length=1, description="Canonical channels, in order.")
    window: int = Field(ge=2, le=1_000_000, description="Samples per window (from window_s when given).")
    hop: int = Field(ge=1, le=1_000_000, description="Samples between window starts (from hop_s when given).")
    statistics: tuple[Statistic, ...] = Field(default=("mean", "std", "min", "max", "slope"), min_length=1)
    window_s: float | None = Field(default=None, gt=0, description="Seconds per window (needs sampling).")
    hop_s: float | None = Field(default=None, gt=0, description="Seconds between window starts.")
    sampling: Sampling | None = Field(
        default=None, description="The sample rate the windows assume; None: unknown (older models)."
    )

    @model_validator(mode="before")
    @classmethod
    def _samples_from_seconds(cls, data: Any) -> Any:
        """Fill ``window`` and ``hop`` from seconds at the sampling rate (they must agree if given too)."""
        if not isinstance(data, dict) or (data.get("window_s") is None and data.get("hop_s") is None):
            return data
        if data.get("window_s") is None or data.get("hop_s") is None:
            raise ValueError("window_s and hop_s go together")
        sampling = data.get("sampling")
        rate = sampling.rate_hz if isinstance(sampling, Sampling) else (sampling or {}).get("rate_hz")
        if rate is None:
            raise ValueError("window_s and hop_s need sampling.rate_hz to count samples")
        out = dict(data)
        for seconds, samples in (("window_s", "window"), ("hop_s", "hop")):
            count = round(float(out[seconds]) * float(rate))
            if out.get(samples) is not None and int(out[samples]) != count:
                raise ValueError(
                    f"{samples}={out[samples]} disagrees with {seconds}={out[seconds]} at {rate} Hz"
                )
            out[samples] = count
        return out

    @model_validator(mode="after")
    def _no_duplicates(self) -> FeatureSpec:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels must be unique")
        if len(set(self.statistics)) != len(self.statistics):
            raise ValueError("statistics must be unique")
        return self

    @property
    def rate_hz(self) -> float | None:
        """The sample rate the windows assume, if the spec says."""
        return None if self.sampling is None else self.sampling.rate_hz

    @property
    def n_features(self) -> int:
        """Length of one feature vector."""
        return len(self.channels) * len(self.statistics)

    def feature_names(self) -> tuple[str, ...]:
        """Names of the features, in vector order: ``<channel>__<statistic>``."""
        return tuple(f"{c}__{s}" for c in self.channels for s in self.statistics)

    def spec_hash(self) -> str:
        """A sha256 over the canonical JSON of the spec; equal specs hash equal.

        Fields left at None are not hashed, so specs written before they existed keep their hash.
        """
        canonical = json.dumps(
            self.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def window_statistics(windows: FloatArray, statistics: tuple[Statistic, ...]) -> FloatArray:
    """Feature vectors of a stack of windows.

    Args:
        windows: shape ``(n_windows, window, n_channels)``.
        statistics: the statistics to compute, in order.

    Returns:
        Shape ``(n_windows, n_channels * len(statistics))``, channel-major.

    """
    return _channel_statistics(np.asarray(windows, dtype=np.float64).transpose(0, 2, 1), statistics)


def _channel_statistics(x: FloatArray, statistics: tuple[Statistic, ...]) -> FloatArray:
    """`window_statistics` of windows laid out ``(n_windows, n_channels, window)``.

    Every statistic reduces the last axis; `batch_features` and `StreamingFeaturizer`
    both pass views whose last axis is contiguous, so they compute identically.
    """
    n_windows, n_channels, length = x.shape
    out = np.empty((n_windows, n_channels, len(statistics)), dtype=np.float64)
    mean: FloatArray | None = None
    low: FloatArray | None = None
    high: FloatArray | None = None
    for j, stat in enumerate(statistics):
        if stat in ("mean", "std"):
            if mean is None:
                mean = np.add.reduce(x, axis=2) / length
            if stat == "mean":
                out[:, :, j] = mean
            else:
                deviation = x - mean[:, :, None]
                np.multiply(deviation, deviation, out=deviation)
                out[:, :, j] = np.sqrt(np.add.reduce(deviation, axis=2) / length)
        elif stat in ("min", "max", "ptp"):
            if stat != "max" and low is None:
                low = np.minimum.reduce(x, axis=2)
            if stat != "min" and high is None:
                high = np.maximum.reduce(x, axis=2)
            if stat == "min":
                out[:, :, j] = low
            elif stat == "max":
                out[:, :, j] = high
            else:
                assert low is not None
                assert high is not None
                out[:, :, j] = high - low
        elif stat == "rms":
            out[:, :, j] = np.sqrt(np.add.reduce(x * x, axis=2) / length)
        elif stat == "slope":
            out[:, :, j] = np.matmul(x, _centred_time(length))
        elif stat == "last":
            out[:, :, j] = x[:, :, -1]
        else:  # pragma: no cover - Literal keeps this unreachable
            raise ValueError(f"unknown statistic {stat!r}")
    return out.reshape(n_windows, n_channels * len(statistics))


_BATCH_WINDOWS = 16_384
"""`batch_features` computes this many windows at a time, to bound its temporary memory."""

_CENTRED_TIME: dict[int, FloatArray] = {}


def _centred_time(length: int) -> FloatArray:
    """Least-squares slope weights for `length` samples: ``(t - t̄) / Σ(t - t̄)²``."""
    weights = _CENTRED_TIME.get(length)
    if weights is None:
        centred_t = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
        weights = centred_t / float(np.dot(centred_t, centred_t))
        if len(_CENTRED_TIME) < 64:
            _CENTRED_TIME[length] = weights
    return weights


def _features_at(columns: FloatArray, first_start: int, count: int, spec: FeatureSpec) -> FloatArray:
    """Features of `count` windows of channel-major `columns`, window i starting at ``first_start + i * hop``.

    The method depends on the spec only, and each window's value on its own samples
    only, so any chunking of a stream gives the same numbers.
    """
    if _use_block_tree(spec):
        end = first_start + (count - 1) * spec.hop + spec.window
        return _block_tree_statistics(columns[:, first_start:end], spec, count)
    return _channel_statistics(_windows_of(columns, first_start, count, spec), spec.statistics)


def _use_block_tree(spec: FeatureSpec) -> bool:
    """Whether windows overlap enough that combining shared blocks beats reducing each window."""
    return spec.window >= 16 * spec.hop


@dataclass(slots=True)
class _Blocks:
    """Statistics of every block of `length` consecutive samples, indexed by block start.

    Each array has shape ``(n_channels, n_samples - length + 1)``; arrays not needed
    by the spec are None. ``m2`` is the sum of squared deviations from the block mean
    and ``moment`` the sum of ``(t - t̄) x_t``: both combine without cancellation
    (Chan et al.'s pairwise update).
    """

    length: int
    starts: int
    total: FloatArray | None
    m2: FloatArray | None
    moment: FloatArray | None
    squares: FloatArray | None
    low: FloatArray | None
    high: FloatArray | None

    def then(self, other: _Blocks) -> _Blocks:
        """Blocks of ``self.length + other.length`` samples: a block of self, then one of other."""
        a, b = self.length, other.length
        n = a + b
        size = self.starts - b  # starts that leave room for the second block

        def head(x: FloatArray | None) -> FloatArray | None:
            return None if x is None else x[:, :size]

        def tail(x: FloatArray | None) -> FloatArray | None:
            return None if x is None else x[:, a : a + size]

        total = m2 = moment = squares = low = high = None
        if self.total is not None and other.total is not None:
            sa, sb = self.total[:, :size], other.total[:, a : a + size]
            total = sa + sb
            delta = sb / b - sa / a
            if self.m2 is not None and other.m2 is not None:
                m2 = self.m2[:, :size] + other.m2[:, a : a + size] + delta * delta * (a * b / n)
            if self.moment is not None and other.moment is not None:
                moment = self.moment[:, :size] + other.moment[:, a : a + size] + delta * (a * b / 2.0)
        if self.squares is not None and other.squares is not None:
            squares = self.squares[:, :size] + other.squares[:, a : a + size]
        sl, ol = head(self.low), tail(other.low)
        if sl is not None and ol is not None:
            low = np.minimum(sl, ol)
        sh, oh = head(self.high), tail(other.high)
        if sh is not None and oh is not None:
            high = np.maximum(sh, oh)
        return _Blocks(n, size, total, m2, moment, squares, low, high)


def _block_tree_statistics(columns: FloatArray, spec: FeatureSpec, count: int) -> FloatArray:
    """Features of windows starting at ``0, hop, 2 hop, …`` of `columns`, from power-of-two blocks.

    Blocks of 1, 2, 4, … samples are built by doubling; a window is the
    concatenation of the blocks of the set bits of its length, largest first.
    """
    stats = spec.statistics
    need_total = any(s in ("mean", "std", "slope") for s in stats)
    x = columns
    zeros = np.zeros_like(x) if ("std" in stats or "slope" in stats) else None
    level = _Blocks(
        1,
        x.shape[1],
        x if need_total else None,
        zeros if "std" in stats else None,
        zeros if "slope" in stats else None,
        x * x if "rms" in stats else None,
        x if ("min" in stats or "ptp" in stats) else None,
        x if ("max" in stats or "ptp" in stats) else None,
    )
    window = spec.window
    pieces: dict[int, _Blocks] = {}
    while level.length <= window:
        if window & level.length:
            pieces[level.length] = level
        if level.length * 2 > window:
            break
        level = level.then(level)
    lengths = sorted(pieces, reverse=True)
    acc = pieces[lengths[0]]
    for length in lengths[1:]:
        acc = acc.then(pieces[length])
    assert acc.length == window
    picked = slice(0, (count - 1) * spec.hop + 1, spec.hop)
    n_channels = x.shape[0]
    out = np.empty((count, n_channels, len(stats)), dtype=np.float64)
    for j, stat in enumerate(stats):
        if stat == "mean":
            assert acc.total is not None
            column = acc.total[:, picked] / window
        elif stat == "std":
            assert acc.m2 is not None
            column = np.sqrt(acc.m2[:, picked] / window)
        elif stat == "min":
            assert acc.low is not None
            column = acc.low[:, picked]
        elif stat == "max":
            assert acc.high is not None
            column = acc.high[:, picked]
        elif stat == "ptp":
            assert acc.high is not None
            assert acc.low is not None
            column = acc.high[:, picked] - acc.low[:, picked]
        elif stat == "rms":
            assert acc.squares is not None
            column = np.sqrt(acc.squares[:, picked] / window)
        elif stat == "slope":
            assert acc.moment is not None
            column = acc.moment[:, picked] / (window * (window * window - 1) / 12.0)
        elif stat == "last":
            column = x[:, window - 1 :: spec.hop][:, :count]
        else:  # pragma: no cover - Literal keeps this unreachable
            raise ValueError(f"unknown statistic {stat!r}")
        out[:, :, j] = column.T
    return out.reshape(count, n_channels * len(stats))


def _windows_of(columns: FloatArray, first_start: int, count: int, spec: FeatureSpec) -> FloatArray:
    """A read-only view ``(count, n_channels, window)`` of the windows of channel-major `columns`.

    `columns` is C-contiguous ``(n_channels, n_samples)``; window i starts at sample
    ``first_start + i * hop``. No data is copied.
    """
    if not columns.flags.c_contiguous:
        raise ValueError("windows need channel-major, C-contiguous samples")
    item = columns.itemsize
    view: FloatArray = np.ndarray(
        shape=(count, columns.shape[0], spec.window),
        dtype=np.float64,
        buffer=columns,
        offset=first_start * item,
        strides=(spec.hop * item, columns.shape[1] * item, item),
    )
    view.flags.writeable = False
    return view


def window_end_indices(n_samples: int, spec: FeatureSpec, first_sample: int = 0) -> IntArray:
    """Indices (exclusive ends, in stream sample numbers) of the windows complete by `n_samples`.

    Only windows ending after `first_sample` are returned, so a streaming caller can
    ask "which windows did these new samples complete".
    """
    if n_samples < spec.window:
        return np.empty(0, dtype=np.int64)
    last_k = (n_samples - spec.window) // spec.hop
    ends = np.arange(last_k + 1, dtype=np.int64) * spec.hop + spec.window
    return ends[ends > first_sample]


def batch_features(values: FloatArray, spec: FeatureSpec) -> tuple[FloatArray, IntArray]:
    """Features of every complete window of a whole history.

    Args:
        values: shape ``(n_samples, n_channels)`` in the spec's channel order.
        spec: the feature spec.

    Returns:
        ``(features, ends)``: features of shape ``(n_windows, n_features)`` and, for
        each window, the exclusive end index of its samples.

    """
    values = np.asarray(values, dtype=np.float64)
    _check_shape(values, spec)
    ends = window_end_indices(len(values), spec)
    if len(ends) == 0:
        return np.empty((0, spec.n_features)), ends
    columns = np.ascontiguousarray(values.T)
    chunk = _BATCH_WINDOWS
    parts = [
        _features_at(columns, first * spec.hop, min(chunk, len(ends) - first), spec)
        for first in range(0, len(ends), chunk)
    ]
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)), ends


@dataclass(frozen=True, slots=True)
class CompletedWindows:
    """Windows completed by one `StreamingFeaturizer.push` call."""

    features: FloatArray
    """Shape ``(n, n_features)``."""
    index: IntArray
    """Stream-wide window numbers (window k starts at sample ``k * hop``)."""
    start_rows: IntArray
    """For each window, the row of its first sample in the pushed chunk (negative: an earlier chunk)."""
    end_rows: IntArray
    """For each window, the row of its last sample in the pushed chunk."""

    def __len__(self) -> int:
        return len(self.index)


@dataclass(slots=True)
class FeaturizerState:
    """What a `StreamingFeaturizer` needs to resume: the tail of the stream and its length."""

    samples_seen: int
    tail: FloatArray
    """The last ``min(samples_seen, window - 1)`` samples, shape ``(k, n_channels)``."""


class StreamingFeaturizer:
    """Computes window features incrementally as samples arrive, equal to `batch_features`.

    Feed it chunks in stream order with `push`; it returns the windows each chunk
    completes. `state` and `from_state` let the agent checkpoint the open window.
    """

    __slots__ = ("_samples_seen", "_spec", "_tail")

    def __init__(self, spec: FeatureSpec) -> None:
        self._spec = spec
        self._samples_seen = 0
        # The last min(samples_seen, window - 1) samples, channel-major: (n_channels, k).
        self._tail: FloatArray = np.empty((len(spec.channels), 0), dtype=np.float64)

    def __repr__(self) -> str:
        spec = self._spec
        return f"StreamingFeaturizer(window={spec.window}, hop={spec.hop}, seen={self._samples_seen})"

    @property
    def spec(self) -> FeatureSpec:
        """The feature spec this featurizer computes."""
        return self._spec

    @property
    def samples_seen(self) -> int:
        """How many samples were pushed since the stream began."""
        return self._samples_seen

    @property
    def samples_to_next_window(self) -> int:
        """How many more samples complete the next window (at least 1)."""
        spec, seen = self._spec, self._samples_seen
        if seen < spec.window:
            return spec.window - seen
        return spec.hop - (seen - spec.window) % spec.hop

    def push(self, values: FloatArray) -> CompletedWindows:
        """Add samples (shape ``(n, n_channels)``) and return the windows they complete."""
        spec = self._spec
        window, hop = spec.window, spec.hop
        values = np.asarray(values, dtype=np.float64)
        _check_shape(values, spec)
        tail = self._tail
        before = self._samples_seen
        after = before + len(values)
        # Windows k with k * hop + window in (before, after].
        first_k = max(0, (before - window) // hop + 1)
        last_k = (after - window) // hop if after >= window else -1
        count = max(0, last_k - first_k + 1)
        kept = tail.shape[1]
        joined = np.empty((values.shape[1], kept + len(values)), dtype=np.float64)
        joined[:, :kept] = tail
        joined[:, kept:] = values.T
        offset = before - kept  # stream sample number of joined[:, 0]
        if count:
            features = _features_at(joined, first_k * hop - offset, count, spec)
        else:
            features = np.empty((0, spec.n_features))
        keep = min(after, window - 1)
        self._tail = joined[:, joined.shape[1] - keep :].copy()
        self._samples_seen = after
        index = np.arange(first_k, first_k + count, dtype=np.int64)
        start_rows = index * hop - before
        return CompletedWindows(
            features=features,
            index=index,
            start_rows=start_rows,
            end_rows=start_rows + (window - 1),
        )

    def state(self) -> FeaturizerState:
        """A copy of what is needed to resume this featurizer exactly."""
        return FeaturizerState(samples_seen=self._samples_seen, tail=self._tail.T.copy())

    @classmethod
    def from_state(cls, spec: FeatureSpec, state: FeaturizerState) -> StreamingFeaturizer:
        """Rebuild a featurizer from a saved `FeaturizerState`."""
        featurizer = cls(spec)
        expected = min(state.samples_seen, spec.window - 1)
        tail = np.asarray(state.tail, dtype=np.float64).reshape(-1, len(spec.channels))
        if len(tail) != expected:
            raise ValueError(f"saved tail has {len(tail)} samples, expected {expected}")
        featurizer._samples_seen = state.samples_seen
        featurizer._tail = np.ascontiguousarray(tail.T)
        return featurizer


def _check_shape(values: FloatArray, spec: FeatureSpec) -> None:
    if values.ndim != 2 or values.shape[1] != len(spec.channels):
        raise ValueError(f"expected samples of shape (n, {len(spec.channels)}), got {values.shape}")
