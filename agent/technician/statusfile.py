"""The status file: what the running daemon says about itself, refreshed atomically each heartbeat.

The daemon writes ``<control dir>/status.json`` (`AgentStatus`) every
`refresh_s` seconds and once more, with ``state = "stopped"``, when it stops
cleanly; ``robotpm-agent status`` reads it. A file older than `stale_after` of its
own refresh period means the agent is not running (it was killed, or hangs: the
watchdog will restart it). The file is replaced by rename, so a reader sees the
old or the new one, never a mix.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.contract.alerts import ModelRef
from agent.ownfiles import NotRegularFileError, read_own
from agent.technician.control import write_atomic
from agent.technician.shelving import Shelf

STATUS_SCHEMA_VERSION: Final = "1.0"
STALE_FACTOR: Final = 3.0
STALE_SLACK_S: Final = 10.0


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class BrokerStatus(_Model):
    """The MQTT connection."""

    connected: bool
    host: str
    port: int
    last_error: str = Field(default="", description="The last connection failure, empty if none yet.")


class StreamStatus(_Model):
    """How far one stream is behind its files, and whether it is degraded."""

    name: str
    lag_bytes: int | None = Field(description="Bytes in the followed files not read yet (None: unknown).")
    lag_s: float | None = Field(description="Wall time now minus the newest sample's time scored.")
    last_sample: datetime | None
    files: int = Field(description="Files followed now.")
    degraded: str | None = Field(default=None, description="Why the stream is degraded, None when it is not.")
    samples: int = Field(
        default=0, description="Records scored since the stream began (restored over restarts)."
    )
    lines: int = Field(default=0, description="Lines read since the agent started.")
    windows: int = 0
    alerts: int = 0
    quarantined: int = 0


class OutboxStatus(_Model):
    """Messages waiting for the broker."""

    depth: int
    oldest_age_s: float | None
    bytes: int
    dropped: dict[str, int] = Field(default_factory=dict)


class ModelUpdate(_Model):
    """The last model life-cycle event: a probation started, passed (live), rolled back, refused."""

    state: str
    model: str | None
    detail: str = ""
    at: datetime | None = None


class ModelStatusView(_Model):
    """The model that scores, the one on probation, the last update's outcome."""

    current: ModelRef
    label: str
    candidate: str | None = None
    candidate_windows: int | None = Field(default=None, description="Probation windows seen so far.")
    candidate_windows_needed: int | None = None
    last_update: ModelUpdate | None = None


class DiskStatus(_Model):
    """Space on the state disk."""

    path: str
    free_bytes: int
    total_bytes: int


class AgentStatus(_Model):
    """``<control dir>/status.json``: the running agent's own account, for ``robotpm-agent status``."""

    schema_version: Literal["1.0"] = STATUS_SCHEMA_VERSION
    robot_id: str
    site: str
    agent_version: str
    pid: int
    state: Literal["running", "stopped"]
    written_at: datetime
    refresh_s: float = Field(description="How often the file is rewritten while running.")
    uptime_s: float
    broker: BrokerStatus
    streams: tuple[StreamStatus, ...]
    outbox: OutboxStatus
    open_alerts: int
    shelved_alerts: int = Field(description="Open alerts covered by a shelve or maintenance period.")
    shelves: tuple[Shelf, ...] = ()
    model: ModelStatusView
    drift: str = "unknown"
    disk: DiskStatus | None = None


def write_status(path: Path, status: AgentStatus) -> None:
    """Replace the status file atomically (raises OSError; the daemon logs it and goes on)."""
    write_atomic(path, status.model_dump_json(indent=2).encode())


def read_status(path: Path) -> AgentStatus | None:
    """The status file, or None when it is missing (raises ValueError when it is damaged).

    A FIFO, device or symlink in its place is damaged too (ValueError, at once: never read).
    """
    try:
        text = read_own(path, report=False)
    except FileNotFoundError:
        return None
    except NotRegularFileError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from exc
    return AgentStatus.model_validate_json(text)


def age_s(path: Path, now: float) -> float:
    """Seconds since the file was last replaced (0 if its time is in the future)."""
    return max(0.0, now - os.stat(path).st_mtime)


def is_stale(status: AgentStatus, age: float) -> bool:
    """Whether a file of this age means the agent no longer refreshes it."""
    return age > status.refresh_s * STALE_FACTOR + STALE_SLACK_S


def disk_status(path: Path) -> DiskStatus | None:
    """Free and total space of the file system holding `path`, or None if it cannot be read."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return DiskStatus(path=str(path), free_bytes=usage.free, total_bytes=usage.total)


def stream_lag_bytes(position: Mapping[str, Any]) -> tuple[int | None, int]:
    """(bytes not read yet, files) from a follower position (`agent.ingest` state), by stat-ing each file.

    A file whose device and inode changed since the position was taken counts as unknown.
    """
    entries: Sequence[Any] = position.get("files") or ()
    lag = 0
    known = True
    for entry in entries:
        if not isinstance(entry, Mapping) or entry.get("gone"):
            continue
        try:
            info = os.stat(str(entry.get("path")))
        except OSError:
            continue
        if (info.st_dev, info.st_ino) != (entry.get("dev"), entry.get("ino")):
            known = False
            continue
        lag += max(0, info.st_size - int(entry.get("offset") or 0))
    return (lag if known else None), len(entries)


def utc(ts: float | None) -> datetime | None:
    """Epoch seconds as an aware UTC datetime (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)
