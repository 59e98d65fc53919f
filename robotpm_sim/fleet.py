"""Whole histories of a fleet: each robot's own seed and fault schedule, in memory or on disk."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from robotpm_sim.arm import DEFAULT_START_TS, ArmSimulator
from robotpm_sim.faults import TRUTH_COLUMNS, Fault, GroundTruth, random_schedule
from robotpm_sim.formatting import format_records, format_truth
from robotpm_sim.records import COLUMNS, FloatArray, OutputFormat, header_line
from robotpm_sim.rotating import RotatingLog


def robot_seed(seed: int, robot_id: str) -> int:
    """The seed of one robot of a fleet: stable across runs and platforms."""
    return int(np.random.SeedSequence([seed, zlib.crc32(robot_id.encode())]).generate_state(1)[0])


def simulate_history(
    robot_id: str,
    seconds: float,
    rate_hz: float,
    seed: int,
    faults: Sequence[Fault] | None = None,
    **schedule: float,
) -> tuple[tuple[str, ...], FloatArray, GroundTruth]:
    """A robot's whole history in memory: (column names, values ``(n, 21)``, truth).

    ``faults=None`` draws a schedule from the robot's seed (see `random_schedule`); pass ``()``
    for a robot that stays healthy. `schedule` takes `fleet_member`'s keywords (``start_ts``,
    ``fault_duration_s``, ``mean_healthy_s``). The fleet's robot ``robot_id`` with fleet seed
    ``seed`` is exactly this history.
    """
    sim = fleet_member(robot_id, seconds, rate_hz, seed, faults, **schedule)
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
