"""Build the technician commands' reports from the state database (read-only) and the status file."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from agent.config import AgentConfig
from agent.contract.alerts import AlertEvent, ChannelContribution
from agent.contract.errors import RobotPMError
from agent.health import HEALTH_FILE, current_health
from agent.journal import (
    JournalEntry,
    OpenAlert,
    has_journal,
    journal_size,
    read_entry,
    read_episode,
    read_events,
    read_open_alerts,
    resolve_id,
)
from agent.ownfiles import NotRegularFileError, not_regular, open_own
from agent.state import STATE_FILE
from agent.technician.operations import control_dir
from agent.technician.shelving import Shelf
from agent.technician.statusfile import AgentStatus, age_s, disk_status, is_stale, read_status
from agent.technician.views import (
    AlertFilters,
    AlertsReport,
    ExplainReport,
    FeatureView,
    JournalEventView,
    JournalSize,
    OpenAlertView,
    ScorePoint,
    SourceView,
    StatusReport,
    Thresholds,
    Verdict,
)

MAX_SOURCE_BYTES: Final = 64 * 1024
MAX_SOURCE_LINES: Final = 40
MAX_LINE_CHARS: Final = 300
LOW_DISK_FRACTION: Final = 0.05
SPARK: Final = "▁▂▃▄▅▆▇█"


class NotFoundError(RobotPMError):
    """The journal holds no event or alert with the id asked for."""


@contextlib.contextmanager
def read_only(config: AgentConfig) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to the agent's state database, or None when there is none yet."""
    path = config.state_dir / STATE_FILE
    if not path.exists():
        yield None
        return
    for node in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        kind = not_regular(node)  # SQLite would block reading a FIFO: say so instead
        if kind is not None:
            raise RobotPMError(f"{node}: cannot read the agent's state: not a regular file but a {kind}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        conn.execute("PRAGMA query_only=1")
    except sqlite3.Error as exc:
        raise RobotPMError(f"{path}: cannot read the agent's state: {exc}") from exc
    try:
        yield conn if has_journal(conn) else None
    except sqlite3.Error as exc:
        raise RobotPMError(f"{path}: cannot read the agent's state: {exc}") from exc
    finally:
        conn.close()


def shelves_in(conn: sqlite3.Connection | None) -> list[Shelf]:
    """The shelves stored in the state database (active ones: expired ones end at the agent's next tick)."""
    if conn is None:
        return []
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'shelves'").fetchone()
    if exists is None:
        return []
    shelves = [Shelf.model_validate_json(body) for (body,) in conn.execute("SELECT body FROM shelves")]
    return sorted(shelves, key=lambda s: (s.since, s.id))


def open_views(conn: sqlite3.Connection | None, shelves: Sequence[Shelf]) -> tuple[OpenAlertView, ...]:
    """The open alerts, each with the shelf covering it now (if any)."""
    if conn is None:
        return ()
    return tuple(_open_view(a, shelves) for a in read_open_alerts(conn))


def alerts_report(
    config: AgentConfig, *, open_only: bool, since: float | None, stream: str | None, limit: int
) -> AlertsReport:
    """``robotpm-agent alerts``."""
    with read_only(config) as conn:
        shelves = shelves_in(conn)
        opened = tuple(a for a in open_views(conn, shelves) if stream is None or a.stream == stream)
        events: list[JournalEntry] = []
        rows = size = 0
        if conn is not None:
            rows, size = journal_size(conn)
            if not open_only:
                events = read_events(conn, since=since, stream=stream, limit=limit)
    return AlertsReport(
        robot_id=config.robot_id,
        site=config.site,
        filters=AlertFilters(open=open_only, since=_utc(since), stream=stream),
        events=tuple(_event_view(e) for e in events),
        open_alerts=opened,
        journal=JournalSize(
            rows=rows, bytes=size, max_bytes=config.journal.max_bytes, max_age_s=config.journal.max_age_s
        ),
    )


def explain_report(config: AgentConfig, asked: str) -> ExplainReport:
    """``robotpm-agent explain``: the event asked for, or the raise of the alert asked for."""
    with read_only(config) as conn:
        if conn is None:
            raise NotFoundError(f"no alert journal yet in {config.state_dir}: the agent has not run here")
        full = resolve_id(conn, asked)
        entry = read_entry(conn, full)
        episode = read_episode(conn, entry.event.alert_id if entry is not None else full)
        if entry is None and episode:
            entry = episode[0]
        if entry is None:
            raise NotFoundError(f"no event or alert {asked!r} in the journal (see robotpm-agent alerts)")
        shelves = shelves_in(conn)
        still_open = any(a.alert_id == entry.event.alert_id for a in read_open_alerts(conn))
    event = entry.event
    context = entry.context
    top = {f.name for f in event.top_features}
    thresholds = context.get("thresholds")
    points = _score_points(episode or [entry])
    cleared = any(e.event.state == "cleared" for e in episode)
    probe = next((s for s in shelves if s.covers(event)), None)
    return ExplainReport(
        asked=asked,
        alert_id=event.alert_id,
        event_id=event.event_id,
        robot_id=event.robot_id,
        stream=event.stream,
        component=event.component,
        failure_mode=event.failure_mode,
        meaning=str(context.get("meaning", "")),
        direction=str(context.get("direction", "higher_is_worse")),
        state="open" if still_open else "cleared" if cleared else "unknown",
        severity=event.severity,
        score=event.score,
        threshold=event.threshold,
        thresholds=None if thresholds is None else Thresholds.model_validate(thresholds),
        life_cycle=tuple(_event_view(e) for e in episode or [entry]),
        features=tuple(FeatureView(**f, top=f["name"] in top) for f in context.get("features", ()))
        or tuple(
            FeatureView(name=f.name, value=f.value, z=f.z, mean=None, std=None, top=True)
            for f in event.top_features
        ),
        contributors=_contributors(event),
        source=read_source(event.window.source_file, event.window.byte_start, event.window.byte_end),
        scores=tuple(points),
        sparkline=sparkline([p.score for p in points], thresholds),
        model=event.model,
        model_label=str(context.get("model_label", f"{event.model.id}@{event.model.version}")),
        shelved_by=probe,
    )


def status_report(config: AgentConfig, now: float) -> StatusReport:
    """``robotpm-agent status``: the status file, judged for freshness, and the state database."""
    control = control_dir(config)
    reasons: list[str] = []
    agent: AgentStatus | None = None
    age: float | None = None
    try:
        agent = read_status(control.status)
        if agent is not None:
            age = round(age_s(control.status, now), 3)
    except (OSError, ValueError) as exc:
        reasons.append(f"status file unreadable: {exc}")
    shelves: list[Shelf] = []
    opened: tuple[OpenAlertView, ...] = ()
    try:
        with read_only(config) as conn:
            shelves = shelves_in(conn)
            opened = open_views(conn, shelves)
    except RobotPMError as exc:  # e.g. a full disk: SQLite cannot even open it to read; say so, go on
        reasons.append(str(exc))
    running = agent is not None and age is not None and agent.state == "running" and not is_stale(agent, age)
    # The daemon's own health record is written in place, so it stays fresh on a full disk (when the
    # status file cannot be replaced) and while a start waits; it names every fault (agent.health).
    health = current_health(config.state_dir / HEALTH_FILE, now)
    if health is None:
        if agent is None and not reasons:
            reasons.append(f"no status file at {control.status}: the agent has not run with this config")
        elif agent is not None and agent.state == "stopped":
            reasons.append(f"the agent stopped at {_iso(agent.written_at)}")
        elif agent is not None and not running:
            reasons.append(
                f"the status file is {age:.0f} s old (refreshed every {agent.refresh_s:g} s): not running"
            )
    disk = disk_status(config.state_dir if config.state_dir.exists() else config.state_dir.parent)
    verdict: Verdict
    if (running and agent is not None) or health is not None:
        if running and agent is not None:
            reasons.extend(_degraded(agent, disk))
        for key, reason in dict((health or {}).get("faults") or {}).items():
            if not (running and key.startswith("stream:")):  # the status file names those already
                reasons.append(f"{key}: {reason}")
        verdict = "degraded" if reasons else "healthy"
    else:
        verdict = "not_running"
    return StatusReport(
        verdict=verdict,
        exit_code={"healthy": 0, "degraded": 1, "not_running": 3}[verdict],
        reasons=tuple(reasons),
        robot_id=config.robot_id,
        site=config.site,
        state_dir=str(config.state_dir),
        status_file=str(control.status),
        status_age_s=age,
        agent=agent,
        open_alerts=opened,
        shelves=tuple(shelves),
        disk=disk,
    )


def agent_running(config: AgentConfig, now: float) -> bool:
    """Whether the agent refreshes its status file now (reads nothing else: any group member may ask)."""
    path = control_dir(config).status
    try:
        agent = read_status(path)
        return agent is not None and agent.state == "running" and not is_stale(agent, age_s(path, now))
    except (OSError, ValueError):
        return False


def read_source(file: str, start: int, end: int) -> SourceView:
    """The raw lines of a byte range, if the file still holds them at the same place."""

    def missing(note: str) -> SourceView:
        return SourceView(file=file, byte_start=start, byte_end=end, present=False, note=note)

    try:
        # a FIFO or device in its place is refused, not waited on; a symlink is followed, as the follower does
        with os.fdopen(open_own(file, os.O_RDONLY, follow_symlinks=True), "rb") as handle:
            if os.fstat(handle.fileno()).st_size < end:
                return missing("the file is shorter now: rotated or truncated")
            before = b"\n"
            if start > 0:
                handle.seek(start - 1)
                before = handle.read(1)
            handle.seek(start)
            data = handle.read(min(end - start, MAX_SOURCE_BYTES))
    except NotRegularFileError as exc:
        return missing(f"it is no regular file now but a {exc.kind}")
    except FileNotFoundError:
        return missing("the file is gone (rotated away or deleted)")
    except OSError as exc:
        return missing(f"cannot read it: {exc.strerror or exc}")
    if before != b"\n" or (len(data) == end - start and not data.endswith(b"\n")):
        return missing("the range no longer holds whole lines: the file changed")
    lines = data.decode("utf-8", "replace").splitlines()
    truncated = len(lines) > MAX_SOURCE_LINES or end - start > MAX_SOURCE_BYTES
    if len(data) < end - start and lines:
        lines = lines[:-1]  # cut inside a line by the byte limit
    shown = tuple(_clip(line) for line in lines[:MAX_SOURCE_LINES])
    return SourceView(
        file=file, byte_start=start, byte_end=end, present=True, lines=shown, truncated=truncated
    )


def sparkline(scores: Sequence[float | None], thresholds: Any = None) -> str:
    """Scores as block characters, scaled from the lowest score (or clear) to the highest (or critical)."""
    values = [s for s in scores if s is not None]
    if not values:
        return ""
    low, high = min(values), max(values)
    if isinstance(thresholds, dict):
        levels = [float(v) for v in thresholds.values() if isinstance(v, (int, float))]
        if levels:
            low, high = min(low, *levels), max(high, *levels)
    span = high - low or 1.0
    return "".join(
        " " if s is None else SPARK[min(len(SPARK) - 1, int((s - low) / span * len(SPARK)))] for s in scores
    )


# -- internals -------------------------------------------------------------------------------------


def _event_view(entry: JournalEntry) -> JournalEventView:
    shelf = None if entry.shelf is None else Shelf.model_validate(entry.shelf)
    return JournalEventView(event=entry.event, published=entry.published, shelf=shelf)


def _open_view(alert: OpenAlert, shelves: Sequence[Shelf]) -> OpenAlertView:
    covering = next(
        (s for s in shelves if s.covers_head(alert.stream, alert.component, alert.failure_mode)), None
    )
    return OpenAlertView(
        alert_id=alert.alert_id,
        stream=alert.stream,
        component=alert.component,
        failure_mode=alert.failure_mode,
        severity=alert.severity,
        since=datetime.fromtimestamp(alert.since, tz=timezone.utc),
        raised_event=alert.raised_event,
        last_event=alert.last_event,
        published=alert.published,
        shelved_by=covering,
    )


def _score_points(entries: Sequence[JournalEntry]) -> list[ScorePoint]:
    """The scores the episode's events kept, merged by window index."""
    by_window: dict[int, ScorePoint] = {}
    for entry in entries:
        for item in entry.context.get("scores", ()):
            index, end, score = int(item[0]), float(item[1]), item[2]
            by_window[index] = ScorePoint(
                window=index, end=end, score=None if score is None else float(score)
            )
        window = entry.event.window
        by_window.setdefault(
            window.index, ScorePoint(window=window.index, end=window.end, score=entry.event.score)
        )
    return [by_window[i] for i in sorted(by_window)]


def _contributors(event: AlertEvent) -> tuple[ChannelContribution, ...] | None:
    """The model's attribution the event carries (None: it carries none, e.g. a clear)."""
    return event.contributors or None


def _degraded(agent: AgentStatus, disk: Any) -> list[str]:
    reasons: list[str] = []
    if not agent.broker.connected:
        error = f": {agent.broker.last_error}" if agent.broker.last_error else ""
        reasons.append(f"broker {agent.broker.host}:{agent.broker.port} not connected{error}")
    reasons.extend(f"stream {s.name} degraded: {s.degraded}" for s in agent.streams if s.degraded)
    if disk is not None and disk.total_bytes and disk.free_bytes < LOW_DISK_FRACTION * disk.total_bytes:
        reasons.append(f"state disk {disk.path} almost full: {disk.free_bytes} bytes free")
    return reasons


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…"


def _utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
