"""``robotpm-sim``: simulated robot arms writing controller logs, with ground truth beside them.

Two commands:

- ``history`` writes whole histories of a fleet at once: ``OUT/robot-001/arm1.csv`` (rotated into
  ``arm1.csv.1`` … if ``--rotate-bytes`` is given) and ``OUT/robot-001/truth.csv``.
- ``live`` appends to ``OUT/arm1.csv`` in real time, rotating by size, until SIGTERM/SIGINT or
  ``--duration-s``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from agent.cli import stop_on_signals
from robotpm_sim.faults import FAULT_MODES
from robotpm_sim.fleet import simulate_fleet
from robotpm_sim.live import run_live


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robotpm-sim",
        description="Simulate 6-axis pick-and-place robots that wear out: controller logs plus ground truth.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    history = commands.add_parser(
        "history",
        help="write whole histories of a fleet at once",
        description="Write OUT/<robot>/<name>.csv (or .jsonl) and OUT/<robot>/truth.csv for each robot. "
        "Each robot gets its own fault schedule from the seed; same seed, same bytes.",
    )
    history.add_argument("--out", type=Path, required=True, help="output directory")
    history.add_argument("--robots", type=int, default=4, help="number of robots (default 4)")
    history.add_argument("--hours", type=float, default=2.0, help="simulated hours per robot (default 2)")
    history.add_argument("--rate-hz", type=float, default=10.0, help="samples per second (default 10)")
    history.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    history.add_argument(
        "--rotate-bytes", type=int, default=None, help="rotate the log into segments of at most N bytes"
    )
    history.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="log format (default csv)")
    history.add_argument("--name", default="arm1", help="log file stem (default arm1)")
    history.add_argument(
        "--fault-duration-s", type=float, default=1800.0, help="mean fault duration, onset → failure (1800)"
    )
    history.add_argument(
        "--mean-healthy-s", type=float, default=2400.0, help="mean healthy time between faults (2400)"
    )
    history.add_argument(
        "--start-ts", type=float, default=None, help="epoch seconds of the first record (2026-01-01)"
    )

    live = commands.add_parser(
        "live",
        help="append to a log in real time, rotating by size",
        description="Append records to OUT/<name>.csv at --rate-hz, in small flushed batches; rotate "
        "to <name>.csv.1, .2 … by size; stop on SIGTERM/SIGINT or after --duration-s simulated seconds.",
    )
    live.add_argument("--out", type=Path, required=True, help="log directory, e.g. var/demo/logs/arm1")
    live.add_argument("--rate-hz", type=float, default=50.0, help="samples per second (default 50)")
    live.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    live.add_argument(
        "--fault", choices=("none", *FAULT_MODES), default="none", help="fault to develop (default none)"
    )
    live.add_argument("--joint", type=int, default=2, help="joint for bearing_wear/overheating (1-6)")
    live.add_argument("--fault-after-s", type=float, default=10.0, help="fault onset, simulated seconds")
    live.add_argument("--fault-duration-s", type=float, default=40.0, help="onset → failure, seconds")
    live.add_argument(
        "--rotate-bytes", type=int, default=None, help="rotate when a file would exceed N bytes"
    )
    live.add_argument("--keep", type=int, default=5, help="rotated files kept (default 5)")
    live.add_argument("--duration-s", type=float, default=None, help="stop after this many simulated seconds")
    live.add_argument(
        "--time-scale", type=float, default=1.0, help="simulated seconds per wall-clock second (default 1)"
    )
    live.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="log format (default csv)")
    live.add_argument("--name", default="arm1", help="log file stem (default arm1)")
    live.add_argument("--robot-id", default="robot-001", help="robot id for the truth file")
    live.add_argument("--truth", type=Path, default=None, help="also write ground truth to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "history":
            started = time.monotonic()
            kwargs = {} if args.start_ts is None else {"start_ts": args.start_ts}
            written = simulate_fleet(
                args.out,
                robots=args.robots,
                seconds=args.hours * 3600.0,
                rate_hz=args.rate_hz,
                seed=args.seed,
                fmt=args.format,
                rotate_bytes=args.rotate_bytes,
                name=args.name,
                fault_duration_s=args.fault_duration_s,
                mean_healthy_s=args.mean_healthy_s,
                **kwargs,
            )
            rows = round(args.hours * 3600.0 * args.rate_hz)
            print(
                f"wrote {len(written)} robot(s) × {rows} records under {args.out} "
                f"in {time.monotonic() - started:.1f} s"
            )
            return 0
        stop = threading.Event()
        with stop_on_signals(stop):
            summary = run_live(
                args.out,
                rate_hz=args.rate_hz,
                seed=args.seed,
                fault=None if args.fault == "none" else args.fault,
                fault_after_s=args.fault_after_s,
                fault_duration_s=args.fault_duration_s,
                joint=args.joint,
                rotate_bytes=args.rotate_bytes,
                keep=args.keep,
                duration_s=args.duration_s,
                stop_event=stop,
                time_scale=args.time_scale,
                robot_id=args.robot_id,
                name=args.name,
                fmt=args.format,
                truth_path=args.truth,
            )
        print(f"wrote {summary.lines} records to {summary.path} ({summary.rotations} rotations)")
        return 0
    except (ValueError, OSError) as exc:
        print(f"robotpm-sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
