"""The feature spec and its one numpy implementation, shared by training and scoring.

A stream of samples (rows of canonical channels) is cut into windows of `window`
samples, one window every `hop` samples: window k covers samples
``[k * hop, k * hop + window)``. Each window becomes one feature vector: for every
channel, in order, every statistic, in order (`FeatureSpec.feature_names`).

The trainer calls `batch_features` on a whole history; the agent feeds a
`StreamingFeaturizer` chunk by chunk. Both compute the statistics with
`window_statistics`, so their results agree to float tolerance (a tested
property), and the spec hash written into every model manifest lets the agent
refuse a model built for other features.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(default=1, ge=1, description="Version of the feature code contract.")
    channels: tuple[str, ...] = Field(min_length=1, description="Canonical channels, in order.")
    window: int = Field(ge=2, le=100_000, description="Samples per window.")
    hop: int = Field(ge=1, le=100_000, description="Samples between consecutive window starts.")
    statistics: tuple[Statistic, ...] = Field(default=("mean", "std", "min", "max", "slope"), min_length=1)

    @model_validator(mode="after")
    def _no_duplicates(self) -> FeatureSpec:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels must be unique")
        if len(set(self.statistics)) != len(self.statistics):
            raise ValueError("statistics must be unique")
        return self

    @property
    def n_features(self) -> int:
        """Length of one feature vector."""
        return len(self.channels) * len(self.statistics)

    def feature_names(self) -> tuple[str, ...]:
        """Names of the features, in vector order: ``<channel>__<statistic>``."""
        return tuple(f"{c}__{s}" for c in self.channels for s in self.statistics)

    def spec_hash(self) -> str:
        """A sha256 over the canonical JSON of the spec; equal specs hash equal."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def window_statistics(windows: FloatArray, statistics: tuple[Statistic, ...]) -> FloatArray:
    """Feature vectors of a stack of windows.

    Args:
        windows: shape ``(n_windows, window, n_channels)``.
        statistics: the statistics to compute, in order.

    Returns:
        Shape ``(n_windows, n_channels * len(statistics))``, channel-major.

    """
    n_windows, length, n_channels = windows.shape
    columns: list[FloatArray] = []
    mean: FloatArray | None = None
    for stat in statistics:
        if stat == "mean":
            mean = windows.mean(axis=1) if mean is None else mean
            columns.append(mean)
        elif stat == "std":
            columns.append(windows.std(axis=1))
        elif stat == "min":
            columns.append(windows.min(axis=1))
        elif stat == "max":
            columns.append(windows.max(axis=1))
        elif stat == "rms":
            columns.append(np.sqrt(np.mean(windows * windows, axis=1)))
        elif stat == "ptp":
            columns.append(windows.max(axis=1) - windows.min(axis=1))
        elif stat == "slope":
            centred_t = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
            denominator = float(np.dot(centred_t, centred_t))
            columns.append(np.einsum("t,wtc->wc", centred_t, windows) / denominator)
        elif stat == "last":
            columns.append(windows[:, -1, :])
        else:  # pragma: no cover - Literal keeps this unreachable
            raise ValueError(f"unknown statistic {stat!r}")
    stacked = np.stack(columns, axis=2)  # (n_windows, n_channels, n_stats)
    return np.ascontiguousarray(stacked.reshape(n_windows, n_channels * len(statistics)))


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
    views = np.lib.stride_tricks.sliding_window_view(values, spec.window, axis=0)
    # sliding_window_view puts the window axis last: (n, C, W) -> (n, W, C)
    windows = views[ends - spec.window].transpose(0, 2, 1)
    return window_statistics(windows, spec.statistics), ends


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
        self._tail: FloatArray = np.empty((0, len(spec.channels)), dtype=np.float64)

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

    def push(self, values: FloatArray) -> CompletedWindows:
        """Add samples (shape ``(n, n_channels)``) and return the windows they complete."""
        spec = self._spec
        values = np.asarray(values, dtype=np.float64)
        _check_shape(values, spec)
        before = self._samples_seen
        after = before + len(values)
        ends = window_end_indices(after, spec, first_sample=before)
        joined = np.concatenate([self._tail, values]) if len(self._tail) else values
        offset = before - len(self._tail)  # stream sample number of joined[0]
        if len(ends):
            views = np.lib.stride_tricks.sliding_window_view(joined, spec.window, axis=0)
            windows = views[ends - spec.window - offset].transpose(0, 2, 1)
            features = window_statistics(windows, spec.statistics)
        else:
            features = np.empty((0, spec.n_features))
        keep = min(after, spec.window - 1)
        self._tail = np.array(joined[len(joined) - keep :], dtype=np.float64) if keep else joined[:0].copy()
        self._samples_seen = after
        return CompletedWindows(
            features=features,
            index=(ends - spec.window) // spec.hop,
            start_rows=ends - spec.window - before,
            end_rows=ends - 1 - before,
        )

    def state(self) -> FeaturizerState:
        """A copy of what is needed to resume this featurizer exactly."""
        return FeaturizerState(samples_seen=self._samples_seen, tail=self._tail.copy())

    @classmethod
    def from_state(cls, spec: FeatureSpec, state: FeaturizerState) -> StreamingFeaturizer:
        """Rebuild a featurizer from a saved `FeaturizerState`."""
        featurizer = cls(spec)
        expected = min(state.samples_seen, spec.window - 1)
        tail = np.asarray(state.tail, dtype=np.float64).reshape(-1, len(spec.channels))
        if len(tail) != expected:
            raise ValueError(f"saved tail has {len(tail)} samples, expected {expected}")
        featurizer._samples_seen = state.samples_seen
        featurizer._tail = tail
        return featurizer


def _check_shape(values: FloatArray, spec: FeatureSpec) -> None:
    if values.ndim != 2 or values.shape[1] != len(spec.channels):
        raise ValueError(f"expected samples of shape (n, {len(spec.channels)}), got {values.shape}")
