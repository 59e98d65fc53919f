"""DataPreparation: windows and features (with the agent's own code), labels, leak-free splits.

Cleaning drops repeated timestamps; with ``trainer.features.resample_hz`` each robot is
resampled onto a regular grid first (never across a logging gap). Features come from
`agent.contract.features.batch_features`, the one implementation
the agent also scores with. A window takes the ground truth of its last sample:

- failure classification: the fault's class when its health is at or below the
  threshold, or it will fail within the horizon and its health has dropped below
  ``max_positive_health`` (a fault that has barely begun shows nothing yet), else
  ``healthy``;
- remaining useful life: the truth's seconds to failure;
- anomaly-only: windows whose truth mode is ``healthy``.

Splits keep robots (or units) and time apart: no robot's windows appear on both
sides of a split, and time-ordered folds never train on the future.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from agent.contract.features import FeatureSpec, batch_features
from agent.contract.sampling import Sampling
from agent.contract.sampling import resample as resample_samples
from trainer.config import LabelConfig, TrainerConfig
from trainer.errors import DataError
from trainer.stages.extraction import Dataset, RobotSeries
from trainer.stages.truth import HEALTHY, Truth

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

FAILURE_MODES: tuple[str, ...] = ("bearing_wear", "overheating", "gripper_wear", "collision")
"""The simulator's degradation modes, in class order after ``healthy`` (class 0)."""
CLASSES: tuple[str, ...] = (HEALTHY, *FAILURE_MODES)
"""The classes of simulator data."""


def label_classes(*datasets: Dataset) -> tuple[str, ...]:
    """``healthy`` then every failure mode the data sets' truth names: the simulator's first, others sorted.

    Failure modes are free-form (a controller's own names); each becomes a class and an alert head.
    """
    seen: set[str] = set()
    for dataset in datasets:
        for series in dataset.series:
            if series.truth is not None:
                seen.update(np.unique(series.truth.mode).tolist())
    seen.discard(HEALTHY)
    return (HEALTHY, *(m for m in FAILURE_MODES if m in seen), *sorted(seen - set(FAILURE_MODES)))


@dataclass(frozen=True, slots=True)
class WindowSet:
    """Feature vectors of windows with their ground truth, one row per window."""

    features: FloatArray
    robot: npt.NDArray[np.str_]
    end_ts: FloatArray
    mode: npt.NDArray[np.str_]
    component: npt.NDArray[np.str_]
    label: IntArray
    """Class index into `classes`."""
    rul_s: FloatArray
    failure_soon: BoolArray
    """The window's fault fails within the horizon."""
    classes: tuple[str, ...]

    @property
    def ambiguous(self) -> BoolArray:
        """Early degradation: a fault is present but not yet labelled (left out of fitting)."""
        return (self.mode != HEALTHY) & (self.label == 0)

    def __len__(self) -> int:
        return len(self.label)

    def take(self, mask: BoolArray | IntArray) -> WindowSet:
        """The windows selected by a boolean mask or index array."""
        return WindowSet(
            self.features[mask],
            self.robot[mask],
            self.end_ts[mask],
            self.mode[mask],
            self.component[mask],
            self.label[mask],
            self.rul_s[mask],
            self.failure_soon[mask],
            self.classes,
        )

    @property
    def healthy(self) -> BoolArray:
        """Windows whose truth mode is healthy (the negatives for threshold calibration)."""
        return self.mode == HEALTHY

    def components(self) -> dict[str, str]:
        """Failure mode → the component the truth names for it (first seen)."""
        mapping: dict[str, str] = {}
        for mode, component in zip(self.mode.tolist(), self.component.tolist(), strict=True):
            if mode != HEALTHY and mode not in mapping and component:
                mapping[mode] = component
        return mapping


class DataPreparation:
    """Stage 2: turns a `Dataset` into labelled feature windows."""

    def __init__(
        self,
        spec: FeatureSpec,
        labels: LabelConfig,
        classes: Sequence[str] = CLASSES,
        *,
        resample_hz: float | None = None,
        max_gap_s: float = 1.0,
    ) -> None:
        self._spec = spec
        self._labels = labels
        self._classes = tuple(classes)
        self._resample_hz = resample_hz
        self._max_gap_s = max_gap_s

    @classmethod
    def for_config(cls, spec: FeatureSpec, config: TrainerConfig, classes: Sequence[str]) -> DataPreparation:
        """The preparation a trainer config describes: its labels, resampling and gap limit."""
        return cls(
            spec,
            config.labels,
            classes,
            resample_hz=config.features.resample_hz,
            max_gap_s=config.features.max_gap_s,
        )

    @property
    def spec(self) -> FeatureSpec:
        """The feature spec windows are cut with."""
        return self._spec

    def windows(self, dataset: Dataset, require_truth: bool = True) -> WindowSet:
        """Features and labels of every complete window of every robot.

        Without `require_truth`, series without ground truth count as healthy
        throughout (the anomaly-only task learns from such data).
        """
        if dataset.channels != self._spec.channels:
            raise DataError(
                f"dataset channels {dataset.channels} differ from the spec's {self._spec.channels}"
            )
        if not require_truth:
            dataset = _assume_healthy(dataset)
        if not dataset.has_truth:
            missing = [s.source for s in dataset.series if s.truth is None]
            raise DataError(f"no ground truth (truth.csv) for {missing[:3]}: labels are absent")
        parts: list[WindowSet] = []
        for original in dataset.series:
            series = clean(original)
            if self._resample_hz is not None:
                series = resample(series, self._resample_hz, self._max_gap_s)
            assert series.truth is not None
            features, ends = batch_features(series.values, self._spec)
            if not len(ends):
                continue
            last = ends - 1
            truth = series.truth
            mode = truth.mode[last]
            unknown = sorted(set(np.unique(truth.mode).tolist()) - set(self._classes))
            if unknown:  # modes the model has no head for still count as failures in the evaluation
                self._classes = (*self._classes, *unknown)
            rul = truth.rul_s[last]
            health = truth.health[last]
            visible = health <= self._labels.max_positive_health
            soon = (mode != HEALTHY) & (rul <= self._labels.horizon_s) & visible
            degraded = (mode != HEALTHY) & (health <= self._labels.health_threshold)
            class_index = np.array([self._classes.index(m) for m in mode.tolist()], dtype=np.int64)
            label = np.where(soon | degraded, class_index, 0)
            failing, after = _around_failures(
                series.timestamps, truth.failure, ends, self._spec.window, self._labels
            )
            failing_class = np.array(
                [
                    self._classes.index(m) if m in self._classes else 0
                    for m in truth.mode[np.maximum(failing, 0)]
                ],
                dtype=np.int64,
            )
            label = np.where(failing >= 0, failing_class, label)
            mode = np.where(failing >= 0, truth.mode[np.maximum(failing, 0)], mode)
            keep = ~after
            if truth.excluded is not None:
                keep &= ~truth.excluded[last]
            parts.append(
                WindowSet(
                    features=features[keep],
                    robot=np.full(int(keep.sum()), series.robot),
                    end_ts=series.timestamps[last][keep],
                    mode=mode[keep],
                    component=truth.component[last][keep],
                    label=label[keep],
                    rul_s=rul[keep],
                    failure_soon=soon[keep],
                    classes=self._classes,
                )
            )
        if not parts:
            raise DataError(f"no complete window of {self._spec.window} samples in the data")
        return concat([replace(part, classes=self._classes) for part in parts])


def clean(series: RobotSeries) -> RobotSeries:
    """The series without repeated timestamps (the first sample of each timestamp is kept)."""
    if len(series) < 2:
        return series
    keep = np.concatenate(([True], np.diff(series.timestamps) > 0))
    if keep.all():
        return series
    return _take(series, np.flatnonzero(keep))


def resample(series: RobotSeries, rate_hz: float, max_gap_s: float) -> RobotSeries:
    """The series on a regular grid at `rate_hz`: channels interpolated linearly, truth carried forward.

    The grid and the values come from the contract's one implementation (`agent.contract.sampling`,
    the agent's too): grid points inside a gap longer than `max_gap_s` are dropped rather than
    invented; a failure sample moves to its nearest grid point.
    """
    ts = series.timestamps
    if len(ts) < 2:
        return series
    on_grid = resample_samples(ts, series.values, Sampling(rate_hz=rate_hz, max_gap_s=max_gap_s))
    grid, values = on_grid.timestamps, on_grid.values
    previous = np.clip(np.searchsorted(ts, grid, side="right") - 1, 0, len(ts) - 1)
    truth = series.truth
    if truth is not None:
        failure = np.zeros(len(grid), dtype=bool)
        for fail_ts in ts[truth.failure]:
            failure[int(np.argmin(np.abs(grid - fail_ts)))] = True
        truth = Truth(
            mode=truth.mode[previous],
            component=truth.component[previous],
            health=truth.health[previous],
            failure=failure,
            rul_s=np.maximum(truth.rul_s[previous] - (grid - ts[previous]), 0.0),
            excluded=None if truth.excluded is None else truth.excluded[previous],
        )
    return RobotSeries(series.robot, series.source, grid, values.reshape(len(grid), -1), truth)


def _take(series: RobotSeries, index: IntArray) -> RobotSeries:
    truth = series.truth
    if truth is not None:
        truth = Truth(
            truth.mode[index],
            truth.component[index],
            truth.health[index],
            truth.failure[index],
            truth.rul_s[index],
            None if truth.excluded is None else truth.excluded[index],
        )
    return RobotSeries(series.robot, series.source, series.timestamps[index], series.values[index], truth)


def _assume_healthy(dataset: Dataset) -> Dataset:
    """The dataset with a healthy ground truth given to every series that has none."""
    series = []
    for item in dataset.series:
        if item.truth is None:
            n = len(item)
            truth = Truth(
                mode=np.full(n, HEALTHY),
                component=np.full(n, ""),
                health=np.ones(n),
                failure=np.zeros(n, dtype=bool),
                rul_s=np.full(n, np.inf),
            )
            item = replace(item, truth=truth)
        series.append(item)
    return replace(dataset, series=series)


def _around_failures(
    timestamps: FloatArray, failure: BoolArray, ends: IntArray, window: int, labels: LabelConfig
) -> tuple[IntArray, BoolArray]:
    """Per window: the sample index of a failure it contains (else -1), and whether it lies just after one.

    A window containing the failure sample shows the failure itself (a collision's crash
    and protective stop) and takes the failing mode's label; windows starting within
    ``exclude_after_failure_s`` after a failure show the repair and are left out.
    """
    fail_idx = np.flatnonzero(failure)
    starts = ends - window
    if not len(fail_idx):
        return np.full(len(ends), -1, dtype=np.int64), np.zeros(len(ends), dtype=bool)
    # the first failure at or after each window's start
    k = np.searchsorted(fail_idx, starts, side="left")
    inside_idx = fail_idx[np.clip(k, 0, len(fail_idx) - 1)]
    contains = (k < len(fail_idx)) & (inside_idx < ends)
    failing = np.where(contains, inside_idx, -1).astype(np.int64)
    # the latest failure before each window's start
    j = np.searchsorted(fail_idx, starts, side="left") - 1
    before = fail_idx[np.clip(j, 0, None)]
    after = (j >= 0) & (timestamps[before] + labels.exclude_after_failure_s >= timestamps[starts]) & ~contains
    return failing, after


def concat(parts: Sequence[WindowSet]) -> WindowSet:
    """Windows of several sets, in order."""
    return WindowSet(
        np.concatenate([p.features for p in parts]),
        np.concatenate([p.robot for p in parts]),
        np.concatenate([p.end_ts for p in parts]),
        np.concatenate([p.mode for p in parts]),
        np.concatenate([p.component for p in parts]),
        np.concatenate([p.label for p in parts]),
        np.concatenate([p.rul_s for p in parts]),
        np.concatenate([p.failure_soon for p in parts]),
        parts[0].classes,
    )


def grouped_time_folds(
    groups: npt.NDArray[np.str_], times: FloatArray, n_folds: int
) -> Iterator[tuple[IntArray, IntArray]]:
    """Grouped, time-aware folds: each fold validates on whole groups, trained on the others.

    Groups are assigned to folds round-robin in order of their first time stamp, so
    each fold mixes early and late groups; within the training side, windows later
    than the validation groups' end are still allowed, since groups are independent
    assets. With a single group, folds are consecutive time blocks (train on the past only).
    """
    names = np.unique(groups)
    if len(names) >= n_folds:
        first = {n: float(times[groups == n].min()) for n in names}
        ordered = sorted(names.tolist(), key=lambda n: (first[n], n))
        for k in range(n_folds):
            val_groups = set(ordered[k::n_folds])
            val = np.flatnonzero(np.isin(groups, list(val_groups)))
            train = np.flatnonzero(~np.isin(groups, list(val_groups)))
            yield train, val
        return
    order = np.argsort(times, kind="stable")
    blocks = np.array_split(order, n_folds + 1)
    for k in range(1, n_folds + 1):
        yield np.concatenate(blocks[:k]), blocks[k]
