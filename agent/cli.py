"""``robotpm-agent``: run the agent, check a config, show local status, or replay recorded logs offline.

Exit codes: 0 success; 1 a runtime failure (model, state, I/O), with one clear
line on stderr; 2 a bad configuration, naming the file, key and problem.

A reader that goes away (``robotpm-agent status | head -1``, a journald restart under
``run``) ends no command: output to a closed stdout is dropped quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from agent import __version__
from agent.config import AgentConfig, load_agent_config
from agent.contract.errors import ConfigError, RobotPMError
from agent.health import HEALTH_FILE, read_health
from agent.logs import configure_logging
from agent.state import STATE_FILE, free_bytes

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``robotpm-agent``."""
    parser = argparse.ArgumentParser(
        prog="robotpm-agent", description="RobotPM edge agent: sensor logs → ONNX scores → MQTT alerts."
    )
    parser.add_argument("--version", action="version", version=f"robotpm-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run the agent until SIGTERM or SIGINT"),
        ("check", "validate the configuration and load the model, then exit"),
        ("status", "show streams, positions, outbox and model from the local state"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", type=Path, default=Path("config.toml"), help="config file (TOML)")
        cmd.add_argument("--profile", default=None, help="profile to apply (dev, test, prod, …)")
    from agent.replay import add_replay_arguments

    add_replay_arguments(sub)
    return parser


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, wake: Callable[[], None] | None = None) -> Iterator[None]:
    """Set `stop` (and call `wake`) on SIGTERM/SIGINT; restore the previous handlers afterwards."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if wake is not None:
            wake()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _run(config: AgentConfig) -> int:
    from agent.daemon import AgentDaemon  # heavy imports (onnxruntime, paho) only when running

    stop = threading.Event()
    daemon = AgentDaemon(config)
    with stop_on_signals(stop, daemon.stop):  # the loop's wait ends at once, whatever the poll period
        daemon.run(stop)
    return EXIT_OK


def _check(config: AgentConfig) -> int:
    from agent.models.slot import ModelSlot

    scorer = ModelSlot(config.model).load_initial()
    print(f"config ok: robot {config.robot_id} at site {config.site}, {len(config.streams)} stream(s)")
    print(f"model ok: {scorer.manifest.label} ({len(scorer.manifest.heads)} alert heads)")
    return EXIT_OK


def _status(config: AgentConfig) -> int:
    _print_health(config)
    path = config.state_dir / STATE_FILE
    if not path.exists():
        print(f"no state yet at {path}: the agent has not run with this config")
        return EXIT_OK
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            _print_state(conn)
        finally:
            conn.close()
    except (sqlite3.Error, ValueError) as exc:
        print(f"state: cannot read {path}: {exc}")
        return EXIT_FAILURE
    return EXIT_OK


def _print_health(config: AgentConfig) -> None:
    """The running agent's own account (health.json), and whether the state directory has room."""
    health = read_health(config.state_dir / HEALTH_FILE)
    if health is not None:
        age = time.time() - float(health.get("updated", 0.0))
        print(f"agent: {health.get('state')} (pid {health.get('pid')}, reported {age:.0f} s ago)")
        faults: dict[str, Any] = health.get("faults") or {}
        for key, reason in faults.items():
            print(f"  degraded: {key}: {reason}")
        if not faults:
            print("  no faults")
    free = free_bytes(config.state_dir)
    if free is not None and free < 1 << 20:
        print(f"disk: {config.state_dir} has only {free} bytes free (disk full: the agent waits)")


def _print_state(conn: sqlite3.Connection) -> None:
    for stream, state, updated in conn.execute("SELECT stream, state, updated FROM stream_state"):
        data = json.loads(state)
        pipeline = data.get("pipeline", {})
        print(
            f"stream {stream}: model {pipeline.get('model')}, samples {pipeline.get('samples_seen')}, "
            f"last timestamp {pipeline.get('last_ts')}, saved at {updated:.3f}"
        )
        print(f"  position: {json.dumps(data.get('follower'))[:400]}")
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "outbox" in tables:
        (depth,) = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
        print(f"outbox: {depth} message(s) waiting for the broker")


class ReaderSafeStream:
    """A text stream (stdout) whose reader may go away: writes then go nowhere instead of raising.

    After a broken pipe the file descriptor is pointed at /dev/null, so the interpreter's
    own flush at exit has nowhere to fail either. Other write errors (a full disk under a
    redirected stdout) drop the text too: output must never end the agent.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        """Write `text`, or drop it when nobody can take it."""
        if not self.reader_gone:
            with self._on_error():
                return self._stream.write(text)
        return len(text)

    def flush(self) -> None:
        """Flush, unless nobody can take it."""
        if not self.reader_gone:
            with self._on_error():
                self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    @contextlib.contextmanager
    def _on_error(self) -> Iterator[None]:
        try:
            yield
        except BrokenPipeError:
            self.reader_gone = True
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._stream.fileno())
                os.close(devnull)
        except OSError:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``robotpm-agent``."""
    if not isinstance(sys.stdout, ReaderSafeStream):
        sys.stdout = ReaderSafeStream(sys.stdout)
    try:
        return _main(argv)
    finally:
        sys.stdout.flush()


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_agent_config(args.config, args.profile)
    except ConfigError as exc:
        print(f"robotpm-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level, config.log_format)
    if args.command == "check":  # `run` starts anyway: a missing directory degrades its stream
        for i, stream in enumerate(config.streams):
            if not stream.directory.is_dir():
                print(
                    f"robotpm-agent: configuration error: {args.config}: agent.streams[{i}].directory: "
                    f"no such directory: {stream.directory}",
                    file=sys.stderr,
                )
                return EXIT_CONFIG
    commands = {"run": _run, "check": _check, "status": _status}
    try:
        if args.command == "replay":
            from agent.replay import replay_command

            return replay_command(config, args)
        return commands[args.command](config)
    except ConfigError as exc:
        print(f"robotpm-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RobotPMError as exc:
        print(f"robotpm-agent: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
