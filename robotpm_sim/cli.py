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
from typing import Any

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
        "Each robot gets its own fault schedule from the seed; same seed, same bytes. "
        "The bundled model was trained on 50 Hz logs.",
    )
    _log_options(history, "output directory", rate_hz=10.0, fault_duration_s=1800.0, fault_help="mean fault")
    history.add_argument("--robots", type=int, default=4, help="number of robots (default 4)")
    history.add_argument("--hours", type=float, default=2.0, help="simulated hours per robot (default 2)")
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
    _log_options(live, "log directory, e.g. var/demo/logs/arm1", rate_hz=50.0, fault_duration_s=40.0)
    live.add_argument(
        "--fault", choices=("none", *FAULT_MODES), default="none", help="fault to develop (default none)"
    )
    live.add_argument("--joint", type=int, default=2, help="joint for bearing_wear/overheating (1-6)")
    live.add_argument("--fault-after-s", type=float, default=10.0, help="fault onset, simulated seconds")
    live.add_argument("--keep", type=int, default=5, help="rotated files kept (default 5)")
    live.add_argument("--duration-s", type=float, default=None, help="stop after this many simulated seconds")
    live.add_argument(
        "--time-scale", type=float, default=1.0, help="simulated seconds per wall-clock second (default 1)"
    )
    live.add_argument("--robot-id", default="robot-001", help="robot id for the truth file")
    live.add_argument("--truth", type=Path, default=None, help="also write ground truth to this file")
    return parser


def _log_options(
    parser: argparse.ArgumentParser,
    out_help: str,
    *,
    rate_hz: float,
    fault_duration_s: float,
    fault_help: str = "fault",
) -> None:
    """The options both commands share: where and how the log is written, the seed, fault length."""
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument(
        "--rate-hz", type=float, default=rate_hz, help=f"samples per second (default {rate_hz:g})"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument(
        "--rotate-bytes", type=int, default=None, help="rotate the log into segments of at most N bytes"
    )
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="log format (default csv)")
    parser.add_argument("--name", default="arm1", help="log file stem (default arm1)")
    parser.add_argument(
        "--fault-duration-s",
        type=float,
        default=fault_duration_s,
        help=f"{fault_help} duration, onset → failure, seconds (default {fault_duration_s:g})",
    )


def _options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The parsed options `names` as keyword arguments (argparse's values are untyped anyway)."""
    return {name: getattr(args, name) for name in names}


def _warn_off_the_bundled_rate(rate_hz: float) -> None:
    """Say so when the logs are at another rate than the bundled model was trained at."""
    from agent.config import packaged_model
    from agent.contract.errors import ContractError
    from agent.contract.manifest import ModelManifest

    try:
        sampling = ModelManifest.read(packaged_model()).feature_spec.sampling
    except ContractError:
        return
    if sampling is not None and sampling.judge(rate_hz, 0.0) == "rate_mismatch":
        print(
            f"robotpm-sim: warning: these logs are at {rate_hz:g} Hz, the bundled model was trained at "
            f"{sampling.rate_hz:g} Hz: train a model on them (robotpm-train), or set resample = true on "
            f"the agent's stream, or write them with --rate-hz {sampling.rate_hz:g}",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "history":
            started = time.monotonic()
            kwargs = {} if args.start_ts is None else {"start_ts": args.start_ts}
            written = simulate_fleet(
                args.out,
                seconds=args.hours * 3600.0,
                fmt=args.format,
                **_options(args, "robots", "rate_hz", "seed", "rotate_bytes", "name"),
                **_options(args, "fault_duration_s", "mean_healthy_s"),
                **kwargs,
            )
            rows = round(args.hours * 3600.0 * args.rate_hz)
            print(
                f"wrote {len(written)} robot(s) × {rows} records under {args.out} "
                f"in {time.monotonic() - started:.1f} s"
            )
            _warn_off_the_bundled_rate(args.rate_hz)
            return 0
        stop = threading.Event()
        with stop_on_signals(stop):
            summary = run_live(
                args.out,
                fault=None if args.fault == "none" else args.fault,
                stop_event=stop,
                fmt=args.format,
                truth_path=args.truth,
                **_options(args, "rate_hz", "seed", "fault_after_s", "fault_duration_s", "joint"),
                **_options(args, "rotate_bytes", "keep", "duration_s", "time_scale", "robot_id", "name"),
            )
        print(f"wrote {summary.lines} records to {summary.path} ({summary.rotations} rotations)")
        return 0
    except (ValueError, OSError) as exc:
        print(f"robotpm-sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
