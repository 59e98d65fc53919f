"""The physics of one simulated 6-axis pick-and-place arm, sample by sample, with its truth.

Each arm runs an 8-second pick-and-place cycle (approach, grip, transport with payload, release,
return, wait) and wears out as its faults (`robotpm_sim.faults`) progress.

Everything is deterministic by seed: the noise of sample ``i`` depends only on the robot's seed
and the block ``i`` falls in, so a history generated at once and a live stream generated tick by
tick hold the same values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from robotpm_sim.faults import MODES, Fault, GroundTruth
from robotpm_sim.formatting import format_records
from robotpm_sim.records import (
    COLUMNS,
    CURRENT,
    N_JOINTS,
    SPEED,
    TEMPERATURE,
    TOOL,
    FloatArray,
    IntArray,
    OutputFormat,
)

DEFAULT_START_TS = 1_767_225_600.0
"""2026-01-01T00:00:00Z: histories start here unless told otherwise."""

CYCLE_S = 8.0
BLOCK = 8192
"""Samples per noise block. Part of the determinism contract: changing it changes the data."""

# The cycle, in seconds of motion time: (start, end) of each segment.
_APPROACH = (0.0, 2.0)
_GRIP = (2.0, 2.6)
_TRANSPORT = (2.6, 5.0)
_RELEASE = (5.0, 5.5)
_RETURN = (5.5, 7.5)

# Nominal arm: holding current (A), current per deg/s, current per deg/s², current noise (A),
# temperature rise at equilibrium (K), approach and transport speed amplitudes (deg/s).
_I_HOLD = np.array([1.0, 3.5, 2.5, 0.6, 0.4, 0.2])
_K_SPEED = np.array([0.022, 0.060, 0.045, 0.010, 0.009, 0.004])
_K_ACCEL = np.array([0.006, 0.012, 0.010, 0.003, 0.002, 0.001])
_I_NOISE = np.array([0.030, 0.050, 0.045, 0.020, 0.015, 0.010])
_T_RISE = np.array([18.0, 25.0, 22.0, 12.0, 10.0, 8.0])
_V_APPROACH = np.array([110.0, 45.0, 60.0, 120.0, 90.0, 180.0])
_V_TRANSPORT = np.array([-140.0, 35.0, -50.0, -90.0, 70.0, -150.0])
_PAYLOAD = np.array([1.05, 1.30, 1.25, 1.05, 1.15, 1.10])
_V_NOISE = 0.06  # servo jitter (deg/s): a moving or holding joint is never exactly 0
_T_NOISE = 0.04

# Degradation magnitudes at severity 1.
_BEARING_MEAN = 0.35  # fraction of holding current added (friction)
_BEARING_NOISE = 12.0  # noise multiplier added
_BEARING_RIPPLE = 1.2  # A of speed-proportional ripple
_OVERHEAT_K = 45.0  # K above equilibrium
_GRIP_TAU = 0.06  # s, gripper closing time constant when healthy
_COLLISION_RATE = 1.0 / 25.0  # protective stops per second at severity 1
_SPIKE_S = 0.25
_MIN_STOP_S, _MAX_STOP_S, _CRASH_STOP_S = 2.0, 6.0, 15.0


@dataclass(frozen=True, slots=True)
class _Episode:
    """A fault in sample indices: degradation over [onset, fail), failure sample ``fail``."""

    mode: int
    joint: int
    onset: int
    fail: int


@dataclass(slots=True)
class _Stops:
    """Protective stops: start time, duration, joint that spiked, spike factor (sorted, disjoint)."""

    start: FloatArray = field(default_factory=lambda: np.empty(0))
    duration: FloatArray = field(default_factory=lambda: np.empty(0))
    joint: IntArray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    factor: FloatArray = field(default_factory=lambda: np.empty(0))


class ArmSimulator:
    """One robot arm: generates any range of samples, deterministically, with its truth.

    Example::

        sim = ArmSimulator("robot-001", rate_hz=10, seed=7,
                           faults=[Fault("overheating", onset_s=600, duration_s=1200, joint=3)])
        values, truth = sim.samples(0, 36_000)
    """

    def __init__(
        self,
        robot_id: str,
        *,
        rate_hz: float,
        seed: int,
        faults: Sequence[Fault] = (),
        start_ts: float = DEFAULT_START_TS,
    ) -> None:
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self.robot_id = robot_id
        self.rate_hz = float(rate_hz)
        self.seed = seed
        self.start_ts = round(float(start_ts), 3)
        self.faults = tuple(sorted(faults, key=lambda f: f.onset_s))
        for before, after in zip(self.faults, self.faults[1:], strict=False):
            if after.onset_s < before.failure_s:
                raise ValueError(f"faults overlap: {before} and {after}")
        self._episodes = [
            _Episode(
                MODES.index(f.mode),
                f.joint - 1,
                math.ceil(f.onset_s * self.rate_hz - 1e-9),
                max(math.ceil(f.failure_s * self.rate_hz - 1e-9), math.ceil(f.onset_s * self.rate_hz) + 1),
            )
            for f in self.faults
        ]
        self._fail_at = np.array([e.fail for e in self._episodes], dtype=np.int64)
        rng = np.random.default_rng([seed, 0])
        self._i_hold = _I_HOLD * rng.uniform(0.95, 1.05, N_JOINTS)
        self._k_speed = _K_SPEED * rng.uniform(0.95, 1.05, N_JOINTS)
        self._t_rise = _T_RISE * rng.uniform(0.9, 1.1, N_JOINTS)
        self._ambient = float(rng.uniform(20.0, 28.0))
        self._cycle_offset = int(rng.integers(10_000, 2_000_000))
        self._tool_hold = float(rng.uniform(0.75, 0.85))
        # the highest current each joint draws in a normal cycle: an impact spike is a multiple of it
        grid_speed, grid_accel = _kinematics(np.linspace(0.0, CYCLE_S, 801))
        self._i_peak = (
            self._i_hold * _PAYLOAD
            + self._k_speed * np.abs(grid_speed).max(axis=0)
            + _K_ACCEL * np.abs(grid_accel).max(axis=0)
        )
        self._stops = self._plan_stops()
        self._cache: tuple[int, FloatArray, GroundTruth] | None = None
        self._text: tuple[int, str, bytes, IntArray] | None = None

    # -- public -----------------------------------------------------------------------------

    def samples(self, begin: int, end: int) -> tuple[FloatArray, GroundTruth]:
        """Samples ``begin`` (inclusive) to ``end`` (exclusive): values in `COLUMNS` order, truth."""
        if not 0 <= begin <= end:
            raise ValueError(f"bad sample range [{begin}, {end})")
        values: list[FloatArray] = []
        truths: list[GroundTruth] = []
        first, last = begin // BLOCK, (end - 1) // BLOCK
        for k in range(first, last + 1) if end > begin else ():
            block_values, block_truth = self._block(k)
            lo = max(begin - k * BLOCK, 0)
            hi = min(end - k * BLOCK, BLOCK)
            values.append(block_values[lo:hi])
            truths.append(_slice_truth(block_truth, lo, hi))
        if not values:
            return np.empty((0, len(COLUMNS))), _slice_truth(self._block(0)[1], 0, 0)
        return np.concatenate(values), GroundTruth.concat(truths)

    def lines(self, begin: int, end: int, fmt: OutputFormat = "csv") -> bytes:
        """Record lines of samples ``begin`` to ``end``: `format_records` of `samples`, cached per block.

        A live writer asks for a few lines per tick; formatting a whole block once and slicing
        its bytes keeps that cheap.
        """
        if not 0 <= begin <= end:
            raise ValueError(f"bad sample range [{begin}, {end})")
        out: list[bytes] = []
        for k in range(begin // BLOCK, (end - 1) // BLOCK + 1) if end > begin else ():
            if self._text is None or self._text[:2] != (k, fmt):
                text = format_records(self._block(k)[0], fmt)
                ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == 0x0A) + 1
                self._text = (k, fmt, text, np.concatenate(([0], ends)))
            _, _, text, offsets = self._text
            lo = max(begin - k * BLOCK, 0)
            hi = min(end - k * BLOCK, BLOCK)
            out.append(text[int(offsets[lo]) : int(offsets[hi])])
        return b"".join(out)

    # -- generation -------------------------------------------------------------------------

    def _block(self, k: int) -> tuple[FloatArray, GroundTruth]:
        if self._cache is not None and self._cache[0] == k:
            return self._cache[1], self._cache[2]
        index = np.arange(k * BLOCK, (k + 1) * BLOCK, dtype=np.int64)
        values, truth = self._generate(index, np.random.default_rng([self.seed, 2, k]))
        self._cache = (k, values, truth)
        return values, truth

    def _generate(self, index: IntArray, rng: np.random.Generator) -> tuple[FloatArray, GroundTruth]:
        n = len(index)
        t = index / self.rate_hz
        mode = np.zeros(n, dtype=np.int8)
        severity = np.zeros(n)
        failure = np.zeros(n, dtype=np.bool_)
        bearing = np.zeros((n, N_JOINTS))
        heat = np.zeros((n, N_JOINTS))
        grip = np.zeros(n)
        for ep in self._episodes:
            if ep.fail < index[0] or ep.onset > index[-1]:
                continue
            inside = (index >= ep.onset) & (index <= ep.fail)
            progress = np.clip((index - ep.onset) / (ep.fail - ep.onset), 0.0, 1.0)
            s = np.where(inside, progress**1.5, 0.0)
            mode[inside] = ep.mode
            severity = np.maximum(severity, s)
            failure |= index == ep.fail
            if MODES[ep.mode] == "bearing_wear":
                bearing[:, ep.joint] = s
            elif MODES[ep.mode] == "overheating":
                heat[:, ep.joint] = s
            elif MODES[ep.mode] == "gripper_wear":
                grip = s

        # Protective stops pause the cycle: motion time excludes time spent stopped.
        stops = self._stops
        if len(stops.start):
            stop_i = np.searchsorted(stops.start, t, side="right") - 1
            has = stop_i >= 0
            stop_i = np.where(has, stop_i, 0)
            since = np.where(has, t - stops.start[stop_i], np.inf)
            dur = stops.duration[stop_i]
            stopped = has & (since < dur)
            done_before = np.concatenate(([0.0], np.cumsum(stops.duration)))
            paused = np.where(has, done_before[stop_i] + np.minimum(since, dur), 0.0)
        else:
            stop_i = np.zeros(n, dtype=np.int64)
            since = np.full(n, np.inf)
            stopped = np.zeros(n, dtype=np.bool_)
            paused = np.zeros(n)
        spiking = stopped & (since < _SPIKE_S)
        motion = t - paused
        phase = np.mod(motion, CYCLE_S)

        speed, accel = _kinematics(phase)
        carrying = (phase >= _GRIP[1]) & (phase < _TRANSPORT[1])
        load = np.where(carrying[:, None], _PAYLOAD, 1.0)
        noise_i = rng.standard_normal((n, N_JOINTS)) * _I_NOISE * (1.0 + _BEARING_NOISE * bearing)
        ripple = (
            _BEARING_RIPPLE
            * bearing
            * np.abs(speed)
            / np.abs(_V_APPROACH)
            * np.sin(2.0 * np.pi * 7.3 * t)[:, None]
        )
        current = (
            self._i_hold * load * (1.0 + _BEARING_MEAN * bearing)
            + self._k_speed * np.abs(speed)
            + _K_ACCEL * np.abs(accel)
            + noise_i
            + ripple
        )
        speed = speed + rng.standard_normal((n, N_JOINTS)) * _V_NOISE
        # A protective stop: brakes on, speeds exactly 0, holding current; a spike first.
        holding = self._i_hold * load * (1.0 + _BEARING_MEAN * bearing) + noise_i
        current = np.where(stopped[:, None], holding, current)
        speed = np.where(stopped[:, None], 0.0, speed)
        if spiking.any():
            rows = np.flatnonzero(spiking)
            joints = self._stops.joint[stop_i[rows]]
            current[rows, joints] = self._i_peak[joints] * self._stops.factor[stop_i[rows]] + np.abs(
                noise_i[rows, joints]
            )

        duty = np.clip(current / (self._i_hold + self._k_speed * np.abs(_V_APPROACH)), 0.0, 2.0)
        ambient = self._ambient + 2.0 * np.sin(2.0 * np.pi * (t / 86_400.0))
        temperature = (
            ambient[:, None]
            + self._t_rise * (0.92 + 0.08 * duty)
            + 0.3 * np.sin(2.0 * np.pi * motion / CYCLE_S)[:, None]
            + _OVERHEAT_K * heat
            + rng.standard_normal((n, N_JOINTS)) * _T_NOISE
        )
        tool = self._tool_current(phase, grip) + rng.standard_normal(n) * 0.01

        values = np.empty((n, len(COLUMNS)))
        values[:, 0] = np.round(self.start_ts + index / self.rate_hz, 3)
        values[:, 1] = self._cycle_offset + np.floor(motion / CYCLE_S)
        values[:, CURRENT] = np.round(np.abs(current), 3)
        values[:, TEMPERATURE] = np.round(temperature, 2)
        values[:, SPEED] = np.round(speed, 2) + 0.0  # + 0.0 turns -0.0 into 0.0
        values[:, TOOL] = np.round(np.abs(tool), 3)

        following = np.searchsorted(self._fail_at, index, side="left")
        known = following < len(self._fail_at)
        rul = np.full(n, np.nan)
        rul[known] = (self._fail_at[following[known]] - index[known]) / self.rate_hz
        truth = GroundTruth(
            robot_id=self.robot_id,
            timestamps=values[:, 0].copy(),
            mode=mode,
            health=np.round(1.0 - severity, 4),
            failure=failure,
            rul_s=np.round(rul, 3),
        )
        return values, truth

    def _tool_current(self, phase: FloatArray, wear: FloatArray) -> FloatArray:
        """Gripper current: inrush and hold while closing, hold while carrying, pulse on release."""
        idle = 0.05
        hold = self._tool_hold * (1.0 + 0.5 * wear)
        inrush = 2.0 * (1.0 + 0.6 * wear)
        tau = _GRIP_TAU * (1.0 + 5.0 * wear)
        since_grip = phase - _GRIP[0]
        closing = hold + (inrush - hold) * np.exp(-np.maximum(since_grip, 0.0) / tau)
        since_release = phase - _RELEASE[0]
        release = idle + 1.2 * np.exp(-np.maximum(since_release, 0.0) / 0.05)
        return np.select(
            [
                (phase >= _GRIP[0]) & (phase < _GRIP[1]),
                (phase >= _TRANSPORT[0]) & (phase < _TRANSPORT[1]),
                (phase >= _RELEASE[0]) & (phase < _RELEASE[1]),
            ],
            [closing, hold, release],
            default=idle,
        )

    def _plan_stops(self) -> _Stops:
        """Protective stops of every collision fault: thinned Poisson events, then the crash."""
        starts: list[float] = []
        durations: list[float] = []
        joints: list[int] = []
        factors: list[float] = []
        for n, fault in enumerate(self.faults):
            if fault.mode != "collision":
                continue
            rng = np.random.default_rng([self.seed, 3, n])
            t = fault.onset_s
            events: list[tuple[float, float]] = []
            while True:
                t += float(rng.exponential(1.0 / _COLLISION_RATE))
                if t >= fault.failure_s - _CRASH_STOP_S:
                    break
                severity = ((t - fault.onset_s) / fault.duration_s) ** 1.5
                if rng.uniform() < severity:
                    events.append((t, float(rng.uniform(_MIN_STOP_S, _MAX_STOP_S))))
            events.append((fault.failure_s, _CRASH_STOP_S))
            for start, duration in events:
                if starts and start < starts[-1] + durations[-1]:
                    continue
                starts.append(start)
                durations.append(duration)
                joints.append(int(rng.integers(0, N_JOINTS)))
                factors.append(float(rng.uniform(1.6, 2.5)))
        return _Stops(
            np.array(starts, dtype=np.float64),
            np.array(durations, dtype=np.float64),
            np.array(joints, dtype=np.int64),
            np.array(factors, dtype=np.float64),
        )


def _kinematics(phase: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Joint speeds (deg/s) and accelerations (deg/s²) at each cycle phase.

    Each move is a half-sine speed profile; the return move brings every joint back to where
    the cycle started.
    """
    d_app = _APPROACH[1] - _APPROACH[0]
    d_tra = _TRANSPORT[1] - _TRANSPORT[0]
    d_ret = _RETURN[1] - _RETURN[0]
    v_return = -(_V_APPROACH * d_app + _V_TRANSPORT * d_tra) / d_ret
    speed = np.zeros((len(phase), N_JOINTS))
    accel = np.zeros((len(phase), N_JOINTS))
    for (t0, t1), amplitude in ((_APPROACH, _V_APPROACH), (_TRANSPORT, _V_TRANSPORT), (_RETURN, v_return)):
        d = t1 - t0
        inside = (phase >= t0) & (phase < t1)
        x = np.where(inside, (phase - t0) * (np.pi / d), 0.0)
        speed += np.where(inside, np.sin(x), 0.0)[:, None] * amplitude
        accel += np.where(inside, np.cos(x) * (np.pi / d), 0.0)[:, None] * amplitude
    return speed, accel


def _slice_truth(truth: GroundTruth, lo: int, hi: int) -> GroundTruth:
    return GroundTruth(
        truth.robot_id,
        truth.timestamps[lo:hi],
        truth.mode[lo:hi],
        truth.health[lo:hi],
        truth.failure[lo:hi],
        truth.rul_s[lo:hi],
    )
