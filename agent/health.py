"""The running agent's own account of its health, for ``robotpm-agent status`` to read.

One small file in the state directory, ``health.json``: the agent's state
(``starting``, ``waiting``, ``running``, ``stopped``), its pid, when it last wrote,
and its faults (what it is running degraded under: a stream that fails, a full
disk, a state file moved aside, a cause of an earlier death skipped), each with a
one-line reason. The same faults travel in every heartbeat.

The file is allocated once at its full size and then rewritten in place, never
grown, so it can still be written when the disk is full, which is when it is most
needed. A reader may catch a write half done: `read_health` then reads again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import structlog

from agent.ownfiles import move_aside, open_own, read_own
from agent.sdnotify import Notifier

log = structlog.get_logger("robotpm.agent")

AgentState = Literal["starting", "waiting", "running", "stopped"]

HEALTH_FILE: Final = "health.json"
_SIZE: Final = 16 * 1024
_REASON_MAX: Final = 400


class HealthFile:
    """The writer's side: `open` once, `write` whenever something changes, `close` at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def open(self) -> None:
        """Create and allocate the file (raises `OSError`, e.g. on a full disk at the first start).

        A FIFO, device or symlink in its place is moved aside first (logged) and a file made instead.
        """
        move_aside(self.path)
        fd = open_own(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _SIZE:
                os.pwrite(fd, b" " * _SIZE, 0)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def write(self, record: Mapping[str, Any]) -> bool:
        """Replace the content with `record` (JSON, trimmed to fit); False if it could not be written."""
        if self._fd is None:
            return False
        data = _encode(record)
        try:
            os.pwrite(self._fd, data.ljust(_SIZE), 0)
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Close the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Health:
    """Gathers the agent's faults and says so when they change: health.json, systemd's status, the log.

    Faults come from two places: `standing` ones, which hold for the rest of the run (a
    state file moved aside, a model skipped at start), and the ones passed to each
    `update` (streams, the disk, stuck steps), which hold while they are passed.
    """

    def __init__(self, path: Path, notifier: Notifier, *, refresh_s: float, pid: int | None = None) -> None:
        self._file = HealthFile(path)
        self._refresh_s = refresh_s
        self._notifier = notifier
        self._pid = pid if pid is not None else os.getpid()
        self._standing: dict[str, str] = {}
        self.faults: dict[str, str] = {}
        """The faults as last reported."""
        self._state: AgentState = "starting"

    def open(self) -> None:
        """Allocate the health file (a failure is logged: status then says less)."""
        try:
            self._file.open()
        except OSError as exc:
            log.warning("health_file_unavailable", path=str(self._file.path), error=str(exc))

    def standing(self, key: str, reason: str) -> None:
        """A fault that holds for the rest of this run."""
        self._standing[key] = reason

    def update(
        self, state: AgentState, faults: Mapping[str, str], wall: float, *, force: bool = False
    ) -> None:
        """Report `state`, the standing faults and `faults`; written when anything changed or `force`."""
        merged = {**self._standing, **faults}
        changed = merged != self.faults or state != self._state
        if changed:
            for key in merged.keys() - self.faults.keys():
                log.warning("fault_raised", fault=key, reason=merged[key])
            for key in self.faults.keys() - merged.keys():
                log.info("fault_cleared", fault=key)
            if state in ("running", "waiting"):
                self._notifier.status(_summary(state, merged))
        self.faults, self._state = merged, state
        if changed or force:
            record = {
                "state": state,
                "pid": self._pid,
                "updated": wall,
                "refresh_s": self._refresh_s,
                "faults": merged,
            }
            if not self._file.write(record):
                log.debug("health_not_written", path=str(self._file.path))

    def close(self, wall: float) -> None:
        """Say "stopped" and close the file."""
        self.update("stopped", {}, wall, force=True)
        self._file.close()


def _summary(state: str, faults: Mapping[str, str]) -> str:
    if not faults:
        return state
    first = next(iter(faults.items()))
    more = f" (+{len(faults) - 1} more)" if len(faults) > 1 else ""
    return f"{state}, degraded: {first[0]}: {first[1]}"[:200] + more


def current_health(path: Path, now: float) -> dict[str, Any] | None:
    """The record of an agent that is up (starting, waiting or running) and wrote it lately, else None.

    Lately: within three of its refresh periods and 10 s; the record is rewritten at least
    with every heartbeat, and even on a full disk.
    """
    record = read_health(path)
    if record is None or record.get("state") not in ("starting", "waiting", "running"):
        return None
    try:
        age = now - float(record["updated"])
        fresh = age <= 3.0 * float(record.get("refresh_s", 30.0)) + 10.0
    except (KeyError, TypeError, ValueError):
        return None
    return record if fresh else None


def read_health(path: Path) -> dict[str, Any] | None:
    """The last record the agent wrote, or None (no file, or unreadable after a few tries)."""
    for _ in range(5):
        try:
            raw = read_own(path, _SIZE, report=False)  # a FIFO there: None, at once
        except OSError:
            return None
        with contextlib.suppress(ValueError):
            value = json.loads(raw.strip(b" \x00\n") or b"null")
            return value if isinstance(value, dict) else None
        time.sleep(0.01)  # a write in progress
    return None


def _encode(record: Mapping[str, Any]) -> bytes:
    data = json.dumps(record, separators=(",", ":"), default=str).encode()
    if len(data) < _SIZE:
        return data
    faults = {k: str(v)[:_REASON_MAX] for k, v in dict(record.get("faults", {})).items()}
    data = json.dumps({**record, "faults": faults}, separators=(",", ":"), default=str).encode()
    if len(data) < _SIZE:
        return data
    shown = dict(list(faults.items())[:20])
    shown["..."] = f"{len(faults) - len(shown)} more faults not shown"
    return json.dumps({**record, "faults": shown}, separators=(",", ":"), default=str).encode()[: _SIZE - 1]
