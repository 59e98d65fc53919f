"""The local alert journal: every alert event the agent emits, kept on the robot.

The outbox forgets a row once the broker acknowledged it; the journal keeps it, so
a technician without broker access can see what fired yesterday
(``robotpm-agent alerts``) and why (``robotpm-agent explain``). Each event is
written by `AlertJournal.record` **inside the daemon's transaction**, the one that
also stores its outbox row and the stream position it came from: a crash leaves
both or neither, and a replay after a crash writes nothing twice (the event id is
the key).

Two tables:

* ``journal``: one row per event (the event as published, JSON), with the context
  `agent.technician.recorder` gathered for it (thresholds, every feature with its
  z-score, the scores of the windows before it), whether it was published or
  withheld by a shelve, and its size.
* ``journal_open``: one row per open alert (raised, not cleared yet), kept exactly
  in step with the events, never trimmed: the "open alerts" list does not depend on
  the retention of the events that opened them.

Bounds, applied at most every few seconds of running time: rows older than
``max_age_s`` and, beyond ``max_bytes``, the oldest rows are deleted. Age is
measured on the outbox's running clock (seconds the agent ran with this state
file; see `agent.outbox`), never on the wall clock, which can step by decades.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent.contract.alerts import AlertEvent
from agent.errors import StateError
from agent.state import StateStore
from agent.technician.settings import JournalConfig

RETENTION_EVERY_S: Final = 5.0

_DDL: Final = (
    """
    CREATE TABLE IF NOT EXISTS journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        alert_id TEXT NOT NULL,
        stream TEXT NOT NULL,
        state TEXT NOT NULL,
        severity TEXT,
        emitted REAL NOT NULL,
        born REAL NOT NULL,
        event TEXT NOT NULL,
        context TEXT NOT NULL,
        published INTEGER NOT NULL,
        shelf TEXT,
        size INTEGER NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS journal_alert ON journal(alert_id, seq)",
    "CREATE INDEX IF NOT EXISTS journal_emitted ON journal(emitted)",
    """
    CREATE TABLE IF NOT EXISTS journal_open (
        alert_id TEXT PRIMARY KEY,
        stream TEXT NOT NULL,
        component TEXT NOT NULL,
        failure_mode TEXT NOT NULL,
        severity TEXT NOT NULL,
        raised_event TEXT NOT NULL,
        last_event TEXT NOT NULL,
        since REAL NOT NULL,
        published INTEGER NOT NULL
    )
    """,
)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journaled event as stored: the event, its context, and whether it went out."""

    seq: int
    event: AlertEvent
    context: dict[str, Any]
    published: bool
    shelf: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """An alert raised and not cleared yet."""

    alert_id: str
    stream: str
    component: str
    failure_mode: str
    severity: str
    raised_event: str
    last_event: str
    since: float
    """Wall time of the raise (epoch seconds)."""
    published: bool
    """False while every event of it so far was withheld by a shelve."""


class AlertJournal:
    """The journal tables in the agent's state store; see the module docstring.

    Writes run on the daemon's thread, inside its transactions; `running_s` is the
    outbox clock (`agent.outbox.Outbox.running_s`).
    """

    def __init__(self, store: StateStore, config: JournalConfig, running_s: Callable[[], float]) -> None:
        self._store = store
        self._config = config
        self._running_s = running_s
        self._next_retention = 0.0
        try:
            store.migrate(*_DDL)
        except sqlite3.Error as exc:
            raise StateError(f"{store.path}: cannot create the alert journal: {exc}") from exc

    @property
    def config(self) -> JournalConfig:
        """The bounds in force."""
        return self._config

    def use_config(self, config: JournalConfig) -> None:
        """Apply new bounds (a reload); they take effect at the next retention pass."""
        self._config = config
        self._next_retention = 0.0

    def record(
        self,
        conn: sqlite3.Connection,
        event: AlertEvent,
        context: Mapping[str, Any] | None,
        *,
        published: bool,
        shelf: Mapping[str, Any] | None = None,
    ) -> bool:
        """Journal one event inside the caller's transaction; False when it was journaled before."""
        body = event.model_dump_json()
        ctx = json.dumps(dict(context or {}), separators=(",", ":"))
        shelf_text = None if shelf is None else json.dumps(dict(shelf), separators=(",", ":"))
        cursor = conn.execute(
            "INSERT OR IGNORE INTO journal(event_id, alert_id, stream, state, severity, emitted, born, "
            "event, context, published, shelf, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.event_id,
                event.alert_id,
                event.stream,
                event.state,
                event.severity,
                event.emitted_at.timestamp(),
                self._running_s(),
                body,
                ctx,
                int(published),
                shelf_text,
                len(body) + len(ctx) + len(shelf_text or ""),
            ),
        )
        if cursor.rowcount == 0:
            return False
        self._track_open(conn, event, published)
        return True

    def mark_published(self, conn: sqlite3.Connection, alert_id: str, event_id: str) -> None:
        """An event withheld by a shelve was published after all (the shelve ended while it was open)."""
        conn.execute("UPDATE journal SET published = 1 WHERE event_id = ?", (event_id,))
        conn.execute("UPDATE journal_open SET published = 1 WHERE alert_id = ?", (alert_id,))

    def retain(self, conn: sqlite3.Connection) -> int:
        """Delete rows past the age and size bounds, at most every few seconds; returns rows deleted."""
        now = self._running_s()
        if now < self._next_retention:
            return 0
        self._next_retention = now + RETENTION_EVERY_S
        cfg = self._config
        gone = conn.execute("DELETE FROM journal WHERE born < ?", (now - cfg.max_age_s,)).rowcount
        total = int(conn.execute("SELECT COALESCE(SUM(size), 0) FROM journal").fetchone()[0])
        if total > cfg.max_bytes:
            # The oldest rows go first; keep deleting until the rest fits.
            excess = total - cfg.max_bytes
            cut = conn.execute(
                "SELECT seq FROM (SELECT seq, SUM(size) OVER (ORDER BY seq) AS running FROM journal) "
                "WHERE running >= ? ORDER BY seq LIMIT 1",
                (excess,),
            ).fetchone()
            if cut is not None:
                gone += conn.execute("DELETE FROM journal WHERE seq <= ?", (int(cut[0]),)).rowcount
        return max(0, gone)

    # -- reading (the daemon's connection, or a read-only one of the CLI) ------------------------

    def open_alerts(self) -> list[OpenAlert]:
        """The open alerts, oldest first."""
        return read_open_alerts(self._store.connection)

    def entry(self, event_id: str) -> JournalEntry | None:
        """The journaled event with this id, or None."""
        return read_entry(self._store.connection, event_id)

    def _track_open(self, conn: sqlite3.Connection, event: AlertEvent, published: bool) -> None:
        if event.state == "cleared":
            conn.execute("DELETE FROM journal_open WHERE alert_id = ?", (event.alert_id,))
            return
        if event.state == "raised":
            conn.execute(
                "INSERT OR REPLACE INTO journal_open(alert_id, stream, component, failure_mode, severity, "
                "raised_event, last_event, since, published) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.alert_id,
                    event.stream,
                    event.component,
                    event.failure_mode,
                    event.severity or "warning",
                    event.event_id,
                    event.event_id,
                    event.emitted_at.timestamp(),
                    int(published),
                ),
            )
            return
        conn.execute(
            "UPDATE journal_open SET severity = ?, last_event = ?, published = MAX(published, ?) "
            "WHERE alert_id = ?",
            (event.severity or "warning", event.event_id, int(published), event.alert_id),
        )


# -- queries, shared by the daemon and the read-only CLI ----------------------------------------


def _entry(row: Iterable[Any]) -> JournalEntry:
    seq, event, context, published, shelf = row
    return JournalEntry(
        seq=int(seq),
        event=AlertEvent.model_validate_json(event),
        context=dict(json.loads(context)),
        published=bool(published),
        shelf=None if shelf is None else dict(json.loads(shelf)),
    )


_ENTRY_COLUMNS: Final = "seq, event, context, published, shelf"


def has_journal(conn: sqlite3.Connection) -> bool:
    """Whether this state file has the journal tables (an agent that ran with this code)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal'").fetchone()
    return row is not None


MIN_PREFIX: Final = 8


def resolve_id(conn: sqlite3.Connection, text: str) -> str:
    """The full event or alert id that `text` names: itself, or the one id it is a unique prefix of.

    ``robotpm-agent alerts`` shows ids cut to 12 characters; a prefix shorter than
    `MIN_PREFIX`, or one that several ids share, is returned unchanged (and matches nothing).
    """
    if len(text) < MIN_PREFIX or not all(c in "0123456789abcdef" for c in text):
        return text
    pattern = text + "%"
    rows = conn.execute(
        "SELECT event_id FROM journal WHERE event_id LIKE ? "
        "UNION SELECT alert_id FROM journal WHERE alert_id LIKE ? LIMIT 2",
        (pattern, pattern),
    ).fetchall()
    return str(rows[0][0]) if len(rows) == 1 else text


def read_entry(conn: sqlite3.Connection, event_id: str) -> JournalEntry | None:
    """The journaled event with this id, or None."""
    row = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM journal WHERE event_id = ?", (event_id,)).fetchone()
    return None if row is None else _entry(row)


def read_episode(conn: sqlite3.Connection, alert_id: str) -> list[JournalEntry]:
    """Every journaled event of one alert (raise, updates, clear), in order."""
    rows = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM journal WHERE alert_id = ? ORDER BY seq", (alert_id,)
    ).fetchall()
    return [_entry(r) for r in rows]


def read_events(
    conn: sqlite3.Connection,
    *,
    since: float | None = None,
    stream: str | None = None,
    alert_ids: Iterable[str] | None = None,
    limit: int = 1000,
) -> list[JournalEntry]:
    """Journaled events, oldest first, filtered by emission time (wall), stream and alert ids.

    ``limit`` keeps the newest ones when more match.
    """
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("emitted >= ?")
        args.append(since)
    if stream is not None:
        where.append("stream = ?")
        args.append(stream)
    if alert_ids is not None:
        ids = list(alert_ids)
        if not ids:
            return []
        where.append(f"alert_id IN ({','.join('?' * len(ids))})")
        args.extend(ids)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT * FROM (SELECT {_ENTRY_COLUMNS} FROM journal {clause} ORDER BY seq DESC LIMIT ?) "
        "ORDER BY seq",
        (*args, limit),
    ).fetchall()
    return [_entry(r) for r in rows]


def read_open_alerts(conn: sqlite3.Connection) -> list[OpenAlert]:
    """The open alerts, oldest first."""
    rows = conn.execute(
        "SELECT alert_id, stream, component, failure_mode, severity, raised_event, last_event, since, "
        "published FROM journal_open ORDER BY since, alert_id"
    ).fetchall()
    return [
        OpenAlert(
            alert_id=str(r[0]),
            stream=str(r[1]),
            component=str(r[2]),
            failure_mode=str(r[3]),
            severity=str(r[4]),
            raised_event=str(r[5]),
            last_event=str(r[6]),
            since=float(r[7]),
            published=bool(r[8]),
        )
        for r in rows
    ]


def journal_size(conn: sqlite3.Connection) -> tuple[int, int]:
    """(rows, bytes) of the journal."""
    rows, size = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM journal").fetchone()
    return int(rows), int(size)
