"""Fleet simulator: 6-axis pick-and-place arms that wear out, with ground truth.

Each simulated robot runs an 8-second pick-and-place cycle (approach, grip, transport with
payload, release, return, wait). Per joint it reports motor current (A), winding temperature
(°C) and speed (deg/s); plus the gripper's current and the controller's lifetime cycle counter,
in the column layout of ``COLUMNS`` (the contract with ``[[agent.streams]]`` in config.toml).

Four degradation modes progress over a fault's duration, each with its own physical signature:

- ``bearing_wear`` (drive_train): one joint's current gets noisier (vibration-like ripple that
  grows with speed) and its mean rises (friction).
- ``overheating`` (motors): one joint's temperature climbs beyond its thermal equilibrium.
- ``gripper_wear`` (gripper): the gripper takes longer to close and needs more current to close
  and hold.
- ``collision`` (arm): current spikes followed by protective stops (all speeds exactly 0 for
  seconds), becoming more frequent as the fault progresses; the failure is a hard crash.

Severity grows as ``progress ** 1.5`` (slow, then faster); health is ``1 - severity``. At the
failure sample the robot is repaired and healthy again. Ground truth (`GroundTruth`) is aligned
sample by sample with the data and never written into the log itself.

Everything is deterministic by seed: the noise of sample ``i`` depends only on the robot's seed
and the block ``i`` falls in, so a history generated at once and a live stream generated tick by
tick hold the same values.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

OutputFormat = Literal["csv", "jsonl"]

N_JOINTS = 6
COLUMNS: tuple[str, ...] = (
    "ts",
    "CYCLE",
    *(f"A{j}_I" for j in range(1, 7)),
    *(f"A{j}_T" for j in range(1, 7)),
    *(f"A{j}_V" for j in range(1, 7)),
    "TOOL_I",
)
"""Column names of a record, in file order."""

CURRENT = slice(2, 8)
TEMPERATURE = slice(8, 14)
SPEED = slice(14, 20)
TOOL = 20

MODES: tuple[str, ...] = ("healthy", "bearing_wear", "overheating", "gripper_wear", "collision")
"""Ground-truth modes; `GroundTruth.mode` holds indices into this tuple."""
FAULT_MODES: tuple[str, ...] = MODES[1:]
COMPONENTS: dict[str, str] = {
    "healthy": "",
    "bearing_wear": "drive_train",
    "overheating": "motors",
    "gripper_wear": "gripper",
    "collision": "arm",
}
"""The component each mode wears out (empty for healthy)."""

TRUTH_COLUMNS: tuple[str, ...] = ("ts", "robot", "mode", "component", "health", "failure", "rul_s")

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
class Fault:
    """One degradation episode: starts at ``onset_s``, fails ``duration_s`` later, then repaired.

    Times are seconds from the start of the simulation. ``joint`` (1-6) is the affected joint for
    ``bearing_wear`` and ``overheating``; the other modes ignore it.
    """

    mode: str
    onset_s: float
    duration_s: float
    joint: int = 2

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; choose from {list(FAULT_MODES)}")
        if not 1 <= self.joint <= N_JOINTS:
            raise ValueError(f"joint must be 1-6, got {self.joint}")
        if self.duration_s <= 0 or self.onset_s < 0:
            raise ValueError("a fault needs onset_s >= 0 and duration_s > 0")

    @property
    def failure_s(self) -> float:
        """When the fault reaches failure, in seconds from the start."""
        return self.onset_s + self.duration_s


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """Labels aligned sample by sample with the simulated records."""

    robot_id: str
    timestamps: FloatArray
    mode: npt.NDArray[np.int8]
    """Index into `MODES`."""
    health: FloatArray
    """1.0 healthy → 0.0 at failure."""
    failure: npt.NDArray[np.bool_]
    """True on the sample where a fault reaches failure."""
    rul_s: FloatArray
    """Seconds until the next failure; NaN when none is scheduled."""

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def mode_names(self) -> npt.NDArray[np.str_]:
        """Mode names per sample."""
        return np.array(MODES)[self.mode]

    @property
    def components(self) -> npt.NDArray[np.str_]:
        """Component names per sample (empty string when healthy)."""
        return np.array([COMPONENTS[m] for m in MODES])[self.mode]

    @classmethod
    def concat(cls, parts: Sequence[GroundTruth]) -> GroundTruth:
        """Join consecutive pieces of one robot's truth."""
        return cls(
            robot_id=parts[0].robot_id,
            timestamps=np.concatenate([p.timestamps for p in parts]),
            mode=np.concatenate([p.mode for p in parts]),
            health=np.concatenate([p.health for p in parts]),
            failure=np.concatenate([p.failure for p in parts]),
            rul_s=np.concatenate([p.rul_s for p in parts]),
        )


def robot_seed(seed: int, robot_id: str) -> int:
    """The seed of one robot of a fleet: stable across runs and platforms."""
    return int(np.random.SeedSequence([seed, zlib.crc32(robot_id.encode())]).generate_state(1)[0])


def random_schedule(
    seconds: float,
    seed: int,
    *,
    fault_duration_s: float = 1800.0,
    mean_healthy_s: float = 2400.0,
    modes: Sequence[str] = FAULT_MODES,
) -> list[Fault]:
    """Faults at random times, drawn from ``seed``.

    Healthy gaps are around ``mean_healthy_s``, durations around ``fault_duration_s``. The
    schedule runs one fault past ``seconds`` so that the last healthy stretch still knows its
    remaining useful life.
    """
    rng = np.random.default_rng([seed, 1])
    faults: list[Fault] = []
    t = 0.0
    while True:
        onset = t + mean_healthy_s * float(rng.uniform(0.5, 1.5))
        duration = fault_duration_s * float(rng.uniform(0.7, 1.3))
        fault = Fault(str(rng.choice(list(modes))), onset, duration, int(rng.integers(1, 7)))
        faults.append(fault)
        if onset >= seconds:
            return faults
        t = fault.failure_s


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


def simulate_history(
    robot_id: str,
    seconds: float,
    rate_hz: float,
    seed: int,
    faults: Sequence[Fault] | None = None,
    *,
    start_ts: float = DEFAULT_START_TS,
    fault_duration_s: float = 1800.0,
    mean_healthy_s: float = 2400.0,
) -> tuple[tuple[str, ...], FloatArray, GroundTruth]:
    """A robot's whole history in memory: (column names, values ``(n, 21)``, truth).

    ``faults=None`` draws a schedule from the robot's seed (see `random_schedule`); pass ``()``
    for a robot that stays healthy. The fleet's robot ``robot_id`` with fleet seed ``seed`` is
    exactly this history.
    """
    sim = fleet_member(
        robot_id,
        seconds,
        rate_hz,
        seed,
        faults,
        start_ts=start_ts,
        fault_duration_s=fault_duration_s,
        mean_healthy_s=mean_healthy_s,
    )
    values, truth = sim.samples(0, round(seconds * rate_hz))
    return COLUMNS, values, truth


def fleet_member(
    robot_id: str,
    seconds: float,
    rate_hz: float,
    seed: int,
    faults: Sequence[Fault] | None = None,
    *,
    start_ts: float = DEFAULT_START_TS,
    fault_duration_s: float = 1800.0,
    mean_healthy_s: float = 2400.0,
) -> ArmSimulator:
    """The simulator of one fleet robot, its fault schedule drawn from (seed, robot_id) if not given."""
    own_seed = robot_seed(seed, robot_id)
    if faults is None:
        faults = random_schedule(
            seconds, own_seed, fault_duration_s=fault_duration_s, mean_healthy_s=mean_healthy_s
        )
    return ArmSimulator(robot_id, rate_hz=rate_hz, seed=own_seed, faults=faults, start_ts=start_ts)


# -- formatting -------------------------------------------------------------------------------


def header_line(fmt: OutputFormat = "csv") -> bytes:
    """The header line a CSV log starts with (JSON lines have none)."""
    return (",".join(COLUMNS) + "\n").encode() if fmt == "csv" else b""


_DECIMALS = (3, 0, *[3] * 6, *[2] * 6, *[2] * 6, 3)
_CSV_PREFIXES = ("", *[","] * (len(COLUMNS) - 1))
_JSON_PREFIXES = ('{"ts":', *(f',"{name}":' for name in COLUMNS[1:]))


def format_records(values: FloatArray, fmt: OutputFormat = "csv") -> bytes:
    """Record lines for ``values`` (rows in `COLUMNS` order), as the controller writes them.

    Byte for byte what ``"%.3f,%d,…" % row`` gives for values already rounded to their
    decimals (as the simulator's are), built with numpy instead of one format call per number.
    """
    if not len(values):
        return b""
    if fmt == "csv":
        return _format_fixed(values, _DECIMALS, _CSV_PREFIXES, "\n")
    return _format_fixed(values, _DECIMALS, _JSON_PREFIXES, "}\n")


def _format_fixed(values: FloatArray, decimals: Sequence[int], prefixes: Sequence[str], suffix: str) -> bytes:
    """Fixed-point text of every cell, each after its constant prefix; lines end with ``suffix``."""
    table = _TextTable(len(values))
    for column, (places, prefix) in enumerate(zip(decimals, prefixes, strict=True)):
        table.constant(prefix)
        table.number(values[:, column], places)
    table.constant(suffix)
    return table.tobytes()


class _TextTable:
    """Builds many text lines at once: one byte per line and position, plus whether it shows.

    Positions are filled one at a time (a contiguous row each, in a position-major buffer),
    then the buffer is turned line-major and the shown bytes are picked out. Numbers are
    right-aligned in a fixed width with their leading zeros and plus signs hidden, so the
    result reads like ``"%.{places}f" % x`` for already-rounded values.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._chars: list[npt.NDArray[np.uint8] | int] = []
        self._shown: list[npt.NDArray[np.bool_] | bool] = []

    def constant(self, text: str) -> None:
        """The same text on every line."""
        for byte in text.encode():
            self._chars.append(byte)
            self._shown.append(True)

    def choice(self, codes: npt.NDArray[np.integer], options: Sequence[str]) -> None:
        """``options[code]`` on each line."""
        encoded = [o.encode() for o in options]
        width = max(len(e) for e in encoded)
        padded = np.zeros((len(encoded), width), dtype=np.uint8)
        for i, e in enumerate(encoded):
            padded[i, : len(e)] = np.frombuffer(e, dtype=np.uint8)
        lengths = np.array([len(e) for e in encoded])[codes]
        for position in range(width):
            self._chars.append(padded[codes, position])
            self._shown.append(lengths > position)

    def number(self, x: FloatArray, places: int, blank: npt.NDArray[np.bool_] | None = None) -> None:
        """``x`` with ``places`` decimals; nothing where ``blank`` is set."""
        if blank is not None:
            x = np.where(blank, 0.0, x)
        scaled = np.rint(np.abs(x) * 10.0**places)  # integers, exact in float64 below 2**53
        negative = (x < 0) & (scaled > 0)
        whole_digits = max(1, len(str(int(scaled.max()) // 10**places))) if len(x) else 1
        visible = None if blank is None else ~blank
        self._chars.append(45)
        self._shown.append(negative if visible is None else negative & visible)
        for position in range(whole_digits + places):
            if position == whole_digits:
                self._chars.append(46)
                self._shown.append(True if visible is None else visible)
            power = 10.0 ** (whole_digits + places - 1 - position)
            quotient = np.floor(scaled / power)
            self._chars.append((quotient - 10.0 * np.floor(quotient / 10.0) + 48.0).astype(np.uint8))
            if position < whole_digits - 1:  # a leading digit shows only if significant
                significant = quotient > 0
                self._shown.append(significant if visible is None else significant & visible)
            else:
                self._shown.append(True if visible is None else visible)

    def tobytes(self) -> bytes:
        """All lines, joined."""
        width = len(self._chars)
        chars = np.empty((width, self.n), dtype=np.uint8)
        shown = np.empty((width, self.n), dtype=np.bool_)
        for row, (c, m) in enumerate(zip(self._chars, self._shown, strict=True)):
            chars[row] = c
            shown[row] = m
        picked: npt.NDArray[np.uint8] = np.ascontiguousarray(chars.T)[np.ascontiguousarray(shown.T)]
        return picked.tobytes()


def format_truth(truth: GroundTruth) -> bytes:
    """Lines of truth.csv (without header) for ``truth``."""
    if not len(truth):
        return b""
    table = _TextTable(len(truth))
    table.number(truth.timestamps, 3)
    table.constant(f",{truth.robot_id},")
    table.choice(truth.mode, [f"{m},{COMPONENTS[m]}," for m in MODES])
    table.number(truth.health, 4)
    table.constant(",")
    table.number(truth.failure.astype(np.float64), 0)
    table.constant(",")
    table.number(truth.rul_s, 3, blank=np.isnan(truth.rul_s))
    table.constant("\n")
    return table.tobytes()


# -- writing ----------------------------------------------------------------------------------


class RotatingLog:
    """Appends record lines to ``directory/name``, rotating by size like a controller's logger.

    Before a line would take the file past ``rotate_bytes``, the file is renamed to ``name.1``
    (older ones shift to ``.2``, ``.3`` …; beyond ``keep`` they are deleted) and a new file is
    created that starts with the header again. A file always holds at least one record, and
    lines are never split across files.
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        header: bytes,
        rotate_bytes: int | None = None,
        keep: int | None = None,
    ) -> None:
        if rotate_bytes is not None and rotate_bytes <= 0:
            raise ValueError("rotate_bytes must be > 0")
        if keep is not None and keep < 1:
            raise ValueError("keep must be >= 1")
        self.path = directory / name
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self.rotations = 0
        self.lines = 0
        self._header = header
        directory.mkdir(parents=True, exist_ok=True)
        self._file = self._open_new()

    def _open_new(self) -> BinaryIO:
        handle = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        handle.write(self._header)
        handle.flush()
        self._size = len(self._header)
        self._records_in_file = 0
        return handle

    def write(self, data: bytes) -> None:
        """Append complete lines (``data`` ends with a newline), rotating where needed; flush."""
        if not data:
            return
        if self.rotate_bytes is None:
            self._file.write(data)
            self._size += len(data)
            self._count(data.count(b"\n"))
            self._file.flush()
            return
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A) + 1
        pos = 0
        while pos < len(data):
            # lines from pos that fit: cumulative size after each line
            first = int(np.searchsorted(ends, pos, side="right"))
            sizes = self._size + ends[first:] - pos
            fit = int(np.searchsorted(sizes, self.rotate_bytes, side="right"))
            if fit == 0 and self._records_in_file == 0:
                fit = 1  # a line longer than the limit still goes somewhere
            if fit == 0:
                self._rotate()
                continue
            stop = int(ends[first + fit - 1])
            self._file.write(data[pos:stop])
            self._size += stop - pos
            self._count(fit)
            pos = stop
            if pos < len(data):
                self._rotate()
        self._file.flush()

    def _count(self, n: int) -> None:
        self.lines += n
        self._records_in_file += n

    def _rotate(self) -> None:
        self._file.close()
        directory, name = self.path.parent, self.path.name
        if self.keep is not None:
            (directory / f"{name}.{self.keep}").unlink(missing_ok=True)
            top = self.keep - 1
        else:
            top = 0
            while (directory / f"{name}.{top + 1}").exists():
                top += 1
        for k in range(top, 0, -1):
            older = directory / f"{name}.{k}"
            if older.exists():
                os.replace(older, directory / f"{name}.{k + 1}")
        os.replace(self.path, directory / f"{name}.1")
        self.rotations += 1
        self._file = self._open_new()

    def close(self) -> None:
        """Close the current file."""
        self._file.close()

    def __enter__(self) -> RotatingLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_history(
    out: Path,
    robot_id: str,
    sim: ArmSimulator,
    n_samples: int,
    *,
    name: str = "arm1",
    fmt: OutputFormat = "csv",
    rotate_bytes: int | None = None,
    chunk: int = 65_536,
) -> Path:
    """Write one robot's log (``out/robot_id/name.csv``, rotated if asked) and ``truth.csv``."""
    directory = out / robot_id
    suffix = "csv" if fmt == "csv" else "jsonl"
    with (
        RotatingLog(directory, f"{name}.{suffix}", header=header_line(fmt), rotate_bytes=rotate_bytes) as log,
        open(directory / "truth.csv", "wb") as truth_file,
    ):
        truth_file.write((",".join(TRUTH_COLUMNS) + "\n").encode())
        for begin in range(0, n_samples, chunk):
            values, truth = sim.samples(begin, min(begin + chunk, n_samples))
            log.write(format_records(values, fmt))
            truth_file.write(format_truth(truth))
    return directory


def simulate_fleet(
    out: Path,
    *,
    robots: int,
    seconds: float,
    rate_hz: float,
    seed: int,
    fmt: OutputFormat = "csv",
    rotate_bytes: int | None = None,
    name: str = "arm1",
    start_ts: float = DEFAULT_START_TS,
    fault_duration_s: float = 1800.0,
    mean_healthy_s: float = 2400.0,
) -> list[Path]:
    """Write the histories of ``robots`` robots (``robot-001`` …) under ``out``; their directories."""
    written = []
    for number in range(1, robots + 1):
        robot_id = f"robot-{number:03d}"
        sim = fleet_member(
            robot_id,
            seconds,
            rate_hz,
            seed,
            start_ts=start_ts,
            fault_duration_s=fault_duration_s,
            mean_healthy_s=mean_healthy_s,
        )
        written.append(
            write_history(
                out, robot_id, sim, round(seconds * rate_hz), name=name, fmt=fmt, rotate_bytes=rotate_bytes
            )
        )
    return written


# -- live -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveSummary:
    """What a live run wrote."""

    path: Path
    lines: int
    rotations: int


def run_live(
    out_dir: Path,
    *,
    rate_hz: float,
    seed: int,
    fault: str | None = None,
    fault_after_s: float = 10.0,
    fault_duration_s: float = 40.0,
    joint: int = 2,
    rotate_bytes: int | None = None,
    keep: int | None = 5,
    duration_s: float | None = None,
    stop_event: threading.Event | None = None,
    time_scale: float = 1.0,
    robot_id: str = "robot-001",
    name: str = "arm1",
    fmt: OutputFormat = "csv",
    start_ts: float | None = None,
    truth_path: Path | None = None,
    tick_s: float = 0.01,
) -> LiveSummary:
    """Append records to ``out_dir/name.csv`` in real time until stopped; rotate by size.

    Every tick (``tick_s``) the samples that have come due are written as one batch and flushed,
    so 1 kHz costs a hundred writes a second, not a thousand. ``time_scale`` > 1 runs simulated
    time faster than the wall clock. ``duration_s`` is simulated seconds (exactly
    ``duration_s * rate_hz`` lines are written); otherwise the run lasts until ``stop_event`` is
    set. Timestamps start at ``start_ts`` (default: now). Ground truth goes to ``truth_path`` if
    given (never into ``out_dir``, which an agent follows).
    """
    if time_scale <= 0:
        raise ValueError("time_scale must be > 0")
    faults = (
        [] if fault in (None, "", "healthy") else [Fault(str(fault), fault_after_s, fault_duration_s, joint)]
    )
    start = round(time.time() if start_ts is None else start_ts, 3)
    sim = ArmSimulator(robot_id, rate_hz=rate_hz, seed=seed, faults=faults, start_ts=start)
    stop = stop_event or threading.Event()
    total = None if duration_s is None else round(duration_s * rate_hz)
    suffix = "csv" if fmt == "csv" else "jsonl"
    truth_file = None
    if truth_path is not None:
        truth_path.parent.mkdir(parents=True, exist_ok=True)
        truth_file = open(truth_path, "wb")  # noqa: SIM115 (closed below)
        truth_file.write((",".join(TRUTH_COLUMNS) + "\n").encode())
    written = 0
    began = time.monotonic()
    with RotatingLog(
        out_dir, f"{name}.{suffix}", header=header_line(fmt), rotate_bytes=rotate_bytes, keep=keep
    ) as log:
        try:
            while not stop.is_set() and (total is None or written < total):
                due = int((time.monotonic() - began) * time_scale * rate_hz) + 1
                if total is not None:
                    due = min(due, total)
                if due > written:
                    log.write(sim.lines(written, due, fmt))
                    if truth_file is not None:
                        truth_file.write(format_truth(sim.samples(written, due)[1]))
                        truth_file.flush()
                    written = due
                stop.wait(tick_s)
        finally:
            if truth_file is not None:
                truth_file.close()
        return LiveSummary(log.path, log.lines, log.rotations)


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGTERM and SIGINT (call from the main thread)."""

    def _handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def iter_log_lines(directory: Path, name: str) -> Iterator[bytes]:
    """Every record line of a rotated log set, oldest file first, headers skipped."""
    rotated = sorted(
        (p for p in directory.glob(f"{name}.*") if p.suffix.lstrip(".").isdigit()),
        key=lambda p: -int(p.suffix.lstrip(".")),
    )
    for path in [*rotated, directory / name]:
        with open(path, "rb") as handle:
            for line in handle:
                if not line.startswith(b"ts,"):
                    yield line


__all__ = [
    "COLUMNS",
    "COMPONENTS",
    "FAULT_MODES",
    "MODES",
    "TRUTH_COLUMNS",
    "ArmSimulator",
    "Fault",
    "GroundTruth",
    "LiveSummary",
    "RotatingLog",
    "format_records",
    "format_truth",
    "header_line",
    "iter_log_lines",
    "random_schedule",
    "robot_seed",
    "run_live",
    "simulate_fleet",
    "simulate_history",
    "stop_on_signals",
]
