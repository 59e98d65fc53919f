"""``robotpm-agent``: run the agent, check a config, serve a technician, or replay recorded logs offline.

The technician's commands (alerts, explain, status, shelve, unshelve) are in
`agent.technician.commands`, imported only when one of them (or the full help) is asked for:
``run`` and ``check`` do not hold their reports and views in memory (about 0.8 MiB of a
robot's agent; bench/bench_memory.py).

Exit codes: 0 success; 1 a runtime failure (model, state, I/O), with one clear
line on stderr; 2 a bad configuration, naming the file, key and problem. The
technician commands add theirs (`agent.technician.commands`: 1 degraded or
refused, 3 not running, 4 not allowed).

A reader that goes away (``robotpm-agent status | head -1``, journald restarted
under ``run``) ends no command: output to a closed stdout is dropped quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from agent import __version__
from agent.config import AgentConfig, load_agent_config
from agent.contract.errors import ConfigError, RobotPMError
from agent.logfile import configure_agent_logging
from agent.logs import configure_logging

if TYPE_CHECKING:
    from agent.technician.commands import Command

# onnxruntime (1.29 and later) reports to Microsoft from Linux as well: a device id written under
# ~/.cache, an offline SQLite queue of events and an uploader thread. The agent on a robot sends
# nothing it is not configured to, so it opts out. The variable must be set before onnxruntime is
# imported (the decision is latched at start); the model probe child inherits it; an operator's
# own value wins. It also saves 2.0 MiB of RSS and a thread (bench/bench_memory.py).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
DAEMON_COMMANDS = ("run", "check")
"""The commands that need only the daemon's modules (the parser for them alone is enough)."""


def build_parser(*, daemon_only: bool = False) -> argparse.ArgumentParser:
    """The argument parser of ``robotpm-agent``; with `daemon_only`, only `DAEMON_COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="robotpm-agent", description="RobotPM edge agent: sensor logs → ONNX scores → MQTT alerts."
    )
    parser.add_argument("--version", action="version", version=f"robotpm-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "run the agent until SIGTERM or SIGINT"),
        ("check", "validate the configuration and load the model, then exit"),
    ):
        _config_options(sub.add_parser(name, help=text, description=text))
    if daemon_only:
        return parser
    from agent.technician.commands import add_commands

    add_commands(sub, _config_options)
    from agent.replay import add_replay_arguments

    add_replay_arguments(sub)
    return parser


def _config_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--config", type=Path, default=Path("config.toml"), help="config file (TOML)")
    cmd.add_argument("--profile", default=None, help="profile to apply (dev, test, prod, …)")


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


def _run(config: AgentConfig, path: Path, profile: str | None) -> int:
    from agent.daemon import AgentDaemon  # heavy imports (onnxruntime, paho) only when running

    stop = threading.Event()
    daemon = AgentDaemon(config, reload_config=lambda: load_agent_config(path, profile))
    # SIGHUP (systemctl reload, logrotate) reloads the config between ticks: see agent.reload.
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: daemon.request_reload())
    try:
        with stop_on_signals(stop, daemon.stop):  # the loop's wait ends at once, whatever the poll period
            daemon.run(stop)
    finally:
        signal.signal(signal.SIGHUP, previous)
    _exit_past_stuck_threads()
    return EXIT_OK


def _exit_past_stuck_threads() -> None:
    """Exit 0 now if a thread the stop could not end is still running (see `agent.stopping`).

    Such a thread sits in native code (a model load in onnxruntime): tearing the interpreter
    down around it aborts the process, which would turn a clean stop, its final commit made,
    into a crash. Everything the agent writes is closed by now; only the output is flushed.
    """
    stuck = [t.name for t in threading.enumerate() if t is not threading.current_thread() and t.is_alive()]
    if not stuck:
        return
    structlog.get_logger("robotpm.agent").warning("exit_with_threads_left", threads=stuck)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(EXIT_OK)


def _check(config: AgentConfig) -> int:
    from agent.models.slot import ModelSlot

    scorer = ModelSlot(config.model).load_initial()
    print(f"config ok: robot {config.robot_id} at site {config.site}, {len(config.streams)} stream(s)")
    print(f"model ok: {scorer.manifest.label} ({len(scorer.manifest.heads)} alert heads)")
    from agent.streams.sampling import rate_warnings

    for warning in rate_warnings(config.streams, scorer.manifest):
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


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
                devnull = os.open(os.devnull, os.O_WRONLY | os.O_NONBLOCK)
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


def _technician_commands(command: str) -> dict[str, Command]:
    """The technician commands by name, imported only for a command that is not the daemon's."""
    if command in DAEMON_COMMANDS:
        return {}
    from agent.technician.commands import COMMANDS

    return COMMANDS


def _main(argv: Sequence[str] | None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # the command is the first word (robotpm-agent has no options before it but --help/--version)
    daemon_only = bool(words) and words[0] in DAEMON_COMMANDS
    args, unknown = build_parser(daemon_only=daemon_only).parse_known_args(words)
    if unknown:  # the full parser's own message (and exit 2), naming every command
        args = build_parser().parse_args(words)
    technician = _technician_commands(args.command)
    try:
        config = load_agent_config(args.config, args.profile)
    except ConfigError as exc:
        print(f"robotpm-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "run":
        configure_agent_logging(config)  # stdout, and the rotating file of [agent.logging]
    elif args.command not in technician:  # the technician commands' stdout is their report alone
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
    commands = {"run": lambda c: _run(c, args.config, args.profile), "check": _check}
    try:
        if args.command in technician:
            return technician[args.command](config, args)
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
