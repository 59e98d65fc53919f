"""A simulated arm writing its log in real time, in small flushed batches, rotating by size."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from robotpm_sim.arm import ArmSimulator
from robotpm_sim.faults import TRUTH_COLUMNS, Fault
from robotpm_sim.formatting import format_truth
from robotpm_sim.records import OutputFormat, header_line
from robotpm_sim.rotating import RotatingLog


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
