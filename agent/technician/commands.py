"""The technician's subcommands of ``robotpm-agent``: alerts, explain, status, shelve, unshelve.

Exit codes (also in docs/field-guide.md):

=====  ===========================================================================
code   meaning
=====  ===========================================================================
0      done; for ``status``: running and healthy
1      ``status``: running but degraded; others: refused, not found, or a failure
2      bad configuration (the message names the file and key)
3      the agent is not running (``status``; ``shelve``/``unshelve``: request queued)
4      not allowed: the user may not write the control directory (``shelve``/``unshelve``)
=====  ===========================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import re
import secrets
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from pydantic import BaseModel

from agent.config import AgentConfig
from agent.errors import NotAllowedError
from agent.ownfiles import NotRegularFileError, read_own
from agent.technician import render
from agent.technician.operations import control_dir
from agent.technician.reports import (
    NotFoundError,
    agent_running,
    alerts_report,
    explain_report,
    status_report,
)
from agent.technician.shelving import ShelveRequest, ShelveResult
from agent.technician.views import ShelveReport

if TYPE_CHECKING:
    _Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time, where the API docs (pdoc) evaluate annotations
    _Subcommands = argparse._SubParsersAction

EXIT_OK: Final = 0
EXIT_DEGRADED: Final = 1
EXIT_REFUSED: Final = 1
EXIT_CONFIG: Final = 2
EXIT_NOT_RUNNING: Final = 3
EXIT_NOT_ALLOWED: Final = 4

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$")
_UNITS: Final = {
    None: 1.0,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}

Command = Callable[[AgentConfig, argparse.Namespace], int]


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``2h``, ``1.5d``, ``1w``; raises ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_since(text: str, now: float) -> float:
    """Epoch seconds of ``2h`` (ago) or of an ISO 8601 time (UTC unless it names a zone)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a duration or time: {text!r} (e.g. 2h, 2024-05-01T08:00)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def add_commands(
    sub: _Subcommands,
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register the technician subcommands; `common` adds --config and --profile."""
    alerts = sub.add_parser("alerts", help="list the alert events kept on this robot", description=alerts_doc)
    alerts.add_argument("--open", action="store_true", help="only the alerts open now")
    alerts.add_argument("--since", help="events since a duration ago (2h, 30m) or a time (2024-05-01T08:00)")
    alerts.add_argument("--stream", help="events of one stream")
    alerts.add_argument("--limit", type=int, default=200, help="at most this many, the newest (default 200)")
    explain = sub.add_parser("explain", help="why an alert fired", description=explain_doc)
    explain.add_argument("id", help="an event id or alert id (robotpm-agent alerts shows them)")
    status = sub.add_parser(
        "status", help="whether the agent runs and how it is doing", description=status_doc
    )
    for name, text in (
        ("shelve", "shelve alerts: scored and kept, not raised"),
        ("unshelve", "end shelves early"),
    ):
        cmd = sub.add_parser(name, help=text, description=shelve_doc)
        target = cmd.add_mutually_exclusive_group(required=True)
        target.add_argument(
            "alert_id", nargs="?", help="an alert id: its alert head (stream, component, mode)"
        )
        target.add_argument("--stream", help="every alert of one stream")
        target.add_argument("--all", action="store_true", help="every alert of this robot")
        cmd.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the agent's answer")
        if name == "shelve":
            cmd.add_argument(
                "--for", dest="duration", help="how long (15m, 2h, 1d; default [agent.shelving])"
            )
            cmd.add_argument("--reason", required=True, help="why (kept with the shelve and logged)")
            cmd.add_argument(
                "--maintenance", action="store_true", help="mark it as maintenance (out of service)"
            )
    for cmd in (alerts, explain, status, *(sub.choices[n] for n in ("shelve", "unshelve"))):
        cmd.add_argument("--json", action="store_true", help="print JSON (schema: agent/schemas)")
        common(cmd)


alerts_doc = "List the alert events journaled on this robot (raised, updated, cleared), oldest first."
explain_doc = (
    "Explain one alert: its life cycle, score against thresholds, features with z-scores, "
    "the raw log lines of its window, the scores around it and the model version."
)
status_doc = "Whether the agent runs, and how: broker, streams' lag, outbox, alerts, model, disk. Exit 0/1/3."
shelve_doc = (
    "Shelve (or unshelve) alerts: while shelved they are scored and journaled but not raised. "
    "Only root and members of the control directory's group may."
)


def run_alerts(config: AgentConfig, args: argparse.Namespace) -> int:
    """``robotpm-agent alerts``."""
    try:
        since = None if args.since is None else parse_since(args.since, time.time())
    except ValueError as exc:
        return _usage(str(exc))
    report = alerts_report(config, open_only=args.open, since=since, stream=args.stream, limit=args.limit)
    _print(report, args.json, render.alerts_text)
    return EXIT_OK


def run_explain(config: AgentConfig, args: argparse.Namespace) -> int:
    """``robotpm-agent explain``."""
    try:
        report = explain_report(config, args.id)
    except NotFoundError as exc:
        print(f"robotpm-agent: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    _print(report, args.json, render.explain_text)
    return EXIT_OK


def run_status(config: AgentConfig, args: argparse.Namespace) -> int:
    """``robotpm-agent status``: exit 0 healthy, 1 degraded, 3 not running."""
    report = status_report(config, time.time())
    _print(report, args.json, render.status_text)
    return report.exit_code


def run_shelve(config: AgentConfig, args: argparse.Namespace) -> int:
    """``robotpm-agent shelve`` and ``unshelve``: write a request, wait for the agent's answer."""
    action: Literal["shelve", "unshelve"] = "shelve" if args.command == "shelve" else "unshelve"
    try:
        duration = None if getattr(args, "duration", None) is None else parse_duration(args.duration)
    except ValueError as exc:
        return _usage(str(exc))
    try:
        request = ShelveRequest(
            id=f"{time.time_ns():016x}-{secrets.token_hex(4)}",
            action=action,
            alert_id=args.alert_id,
            stream=args.stream,
            all=args.all,
            for_s=duration,
            reason=getattr(args, "reason", "") or "",
            maintenance=bool(getattr(args, "maintenance", False)),
            by=_user(),
            requested_at=datetime.now(tz=timezone.utc),
        )
    except ValueError as exc:
        return _usage(str(exc).splitlines()[-1])
    control = control_dir(config)
    try:
        control.submit(request.id, request.model_dump_json().encode())
    except NotAllowedError as exc:
        print(f"robotpm-agent: {exc}", file=sys.stderr)
        return EXIT_NOT_ALLOWED
    running = agent_running(config, time.time())
    result = _wait_result(control.result_path(request.id), args.wait if running else 0.0)
    report = ShelveReport(request=request, result=result, queued=result is None)
    _print(report, args.json, render.shelve_text)
    if result is None:
        return EXIT_NOT_RUNNING
    return EXIT_OK if result.ok else EXIT_REFUSED


COMMANDS: Final[dict[str, Command]] = {
    "alerts": run_alerts,
    "explain": run_explain,
    "status": run_status,
    "shelve": run_shelve,
    "unshelve": run_shelve,
}


def _wait_result(path: Path, wait_s: float) -> ShelveResult | None:
    """The agent's answer, waited for up to `wait_s` (None: no answer in time).

    A FIFO or other node planted under the answer's name is waited past, never read: the
    agent's atomic write of the answer replaces it.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            result = ShelveResult.model_validate_json(read_own(path, report=False))
        except (FileNotFoundError, NotRegularFileError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
            continue
        with contextlib.suppress(OSError):
            path.unlink()
        return result


def _print(report: BaseModel, as_json: bool, text: Callable[..., str]) -> None:
    sys.stdout.write(report.model_dump_json(indent=2) + "\n" if as_json else text(report))


def _usage(problem: str) -> int:
    print(f"robotpm-agent: {problem}", file=sys.stderr)
    return EXIT_CONFIG


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"
