"""Fault modes, fault schedules and the ground truth that labels every simulated sample.

Four degradation modes progress over a fault's duration, each with its own physical signature
(made by `robotpm_sim.arm`):

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from robotpm_sim.records import N_JOINTS, FloatArray

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
