"""The durable outbox: every message bound for the broker is a row in the agent's SQLite file first.

Life cycle of a row: inserted by `Outbox.enqueue` inside the daemon's transaction
(together with the stream offsets the message was derived from), handed to the
transport by `agent.publish.delivery.Delivery`, deleted once the broker
acknowledged it (PUBACK). A crash at any point leaves the row in place, and a
restarted agent publishes it again with the same key (an alert's ``event_id``),
so subscribers de-duplicate.

Bounds, checked on every enqueue:

* **Age.** Alerts older than ``alert_ttl_s`` and other messages older than
  ``telemetry_ttl_s`` are dropped (reason ``expired``). Age is never read off the
  wall clock, which can step by decades (a robot without an RTC boots in 1970, then
  NTP sets the date): it is measured on the outbox's own clock, the seconds the
  agent has been running with this state file, advanced by the monotonic clock and
  persisted in the file (table ``outbox_clock``, written in every transaction that
  stores or removes rows, and at least with each periodic expiry). Each row records
  that clock at its insertion (``born``), so a row's age is the running time since
  it was stored, summed over restarts. Time the agent is stopped does not count: a
  row can expire late after downtime, never early. (``created`` keeps the wall time
  for people.)
* **Bytes.** When the payloads exceed ``max_bytes``, telemetry (heartbeat, status,
  model, drift) is dropped oldest first (reason ``full``). Alerts are **never**
  dropped before their TTL: when alerts alone exceed the budget, new alerts are
  still stored and counted as ``alert_over_budget`` (the disk, not the alert, pays;
  with the default rate limit the worst case is documented in docs/mqtt-interface.md).

Keys are idempotent: enqueueing a key that is already stored does nothing,
except for the retained "latest state" kinds (``status``, ``model``), where the
newer message replaces the older one. Every drop is counted by ``<kind>:<reason>``
in a table of the same file, so counts survive restarts and are reported in the
heartbeat.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from agent.config import OutboxConfig
from agent.errors import StateError
from agent.seams import Clock, MessageKind, OutboundMessage
from agent.state import StateStore

_REPLACE_KINDS: Final = frozenset({"status", "model"})
_KINDS: Final[tuple[MessageKind, ...]] = ("alert", "status", "heartbeat", "model", "drift")
_EXPIRE_EVERY_S: Final = 1.0

_DDL: Final = (
    """
    CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        created REAL NOT NULL,
        size INTEGER NOT NULL,
        born REAL NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX IF NOT EXISTS outbox_kind_id ON outbox(kind, id)",
    """
    CREATE TABLE IF NOT EXISTS outbox_totals (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        rows INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    )
    """,
    "INSERT OR IGNORE INTO outbox_totals(one, rows, bytes) VALUES (1, 0, 0)",
    """
    CREATE TRIGGER IF NOT EXISTS outbox_totals_insert AFTER INSERT ON outbox BEGIN
        UPDATE outbox_totals SET rows = rows + 1, bytes = bytes + NEW.size WHERE one = 1;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS outbox_totals_delete AFTER DELETE ON outbox BEGIN
        UPDATE outbox_totals SET rows = rows - 1, bytes = bytes - OLD.size WHERE one = 1;
    END
    """,
    """
    CREATE TABLE IF NOT EXISTS outbox_clock (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        running_s REAL NOT NULL
    )
    """,
    "INSERT OR IGNORE INTO outbox_clock(one, running_s) VALUES (1, 0)",
    """
    CREATE TABLE IF NOT EXISTS outbox_drops (
        reason TEXT PRIMARY KEY,
        count INTEGER NOT NULL
    )
    """,
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A stored message and its row id (the delivery order)."""

    id: int
    created: float
    """Wall time of the insertion, for people (never used to measure age)."""
    message: OutboundMessage


class Outbox:
    """The outbox table in the agent's state store; see the module docstring.

    All methods run on the daemon's thread (the one that owns the store).
    """

    store: Final[StateStore]
    """The state store that holds the table."""
    config: Final[OutboxConfig]
    """The bounds in force."""

    def __init__(self, store: StateStore, config: OutboxConfig, clock: Clock) -> None:
        self.store = store
        self.config = config
        self._clock = clock
        self._next_expire = 0.0
        self._enqueue_calls = 0
        try:
            store.migrate(*_DDL)
            with store.transaction() as conn:
                self._running_base = _migrate_born(conn)
        except sqlite3.Error as exc:
            raise StateError(f"{store.path}: cannot create the outbox: {exc}") from exc
        self._mono_base = clock.monotonic()

    def running_s(self) -> float:
        """The outbox clock now: seconds of agent running time with this state file (see the docstring)."""
        return self._running_base + max(0.0, self._clock.monotonic() - self._mono_base)

    @property
    def enqueue_calls(self) -> int:
        """How many times rows were enqueued (a reader that saw the queue drained can skip a query)."""
        return self._enqueue_calls

    def enqueue(self, conn: sqlite3.Connection, messages: Sequence[OutboundMessage]) -> None:
        """Store messages inside the caller's transaction, then enforce the bounds."""
        if not messages:
            return
        self._enqueue_calls += 1
        wall = self._clock.wall()
        now = self._tick(conn)
        for message in messages:
            if message.kind in _REPLACE_KINDS:
                # An explicit delete (not INSERT OR REPLACE) so the totals trigger sees it.
                conn.execute("DELETE FROM outbox WHERE key = ?", (message.key,))
            conn.execute(
                "INSERT OR IGNORE INTO outbox(key, kind, topic, payload, qos, retain, created, size, born) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message.key,
                    message.kind,
                    message.topic,
                    message.payload,
                    message.qos,
                    int(message.retain),
                    wall,
                    len(message.payload) + len(message.topic),
                    now,
                ),
            )
        self._enforce(conn, now, new_alert_bytes=any(m.kind == "alert" for m in messages))

    def enqueue_now(self, messages: Sequence[OutboundMessage]) -> None:
        """Store messages in a transaction of their own (telemetry outside the stream loop)."""
        with self.store.transaction() as conn:
            self.enqueue(conn, messages)

    def expire(self) -> int:
        """Drop rows past their TTL now; returns how many were dropped."""
        with self.store.transaction() as conn:
            return self._expire(conn, self._tick(conn))

    def pending(self, after_id: int, limit: int) -> list[OutboxRow]:
        """Up to `limit` rows with an id above `after_id`, oldest first."""
        rows = self.store.connection.execute(
            "SELECT id, key, kind, topic, payload, qos, retain, created FROM outbox "
            "WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [
            OutboxRow(
                id=int(r[0]),
                created=float(r[7]),
                message=OutboundMessage(
                    key=str(r[1]),
                    kind=_kind(r[2]),
                    topic=str(r[3]),
                    payload=bytes(r[4]),
                    qos=1 if int(r[5]) else 0,
                    retain=bool(r[6]),
                ),
            )
            for r in rows
        ]

    def delete(self, ids: Sequence[int]) -> int:
        """Delete acknowledged rows in one transaction; returns how many existed.

        Deletes commit with ``synchronous=NORMAL`` (no fsync of their own; the next
        FULL commit or checkpoint makes them durable). A delete lost to a power cut
        only means the row is published again: a duplicate with the same key, which
        at-least-once delivery allows. An fsync per PUBACK batch would cap catch-up
        at a few hundred batches per second.
        """
        if not ids:
            return 0
        raw = self.store.connection
        raw.execute("PRAGMA synchronous=NORMAL")
        try:
            with self.store.transaction() as conn:
                cursor = conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
                return max(0, cursor.rowcount)
        finally:
            raw.execute("PRAGMA synchronous=FULL")

    def drop(self, ids: Sequence[int], reason: str) -> int:
        """Drop rows that can never be delivered, counting them under `reason` (``<kind>:<why>``)."""
        if not ids:
            return 0
        with self.store.transaction() as conn:
            cursor = conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
            gone = max(0, cursor.rowcount)
            if gone:
                _count(conn, reason, gone)
            self._tick(conn)
            return gone

    def depth(self) -> int:
        """Rows waiting for an acknowledgement."""
        return int(self._totals()[0])

    def size_bytes(self) -> int:
        """Bytes of topics and payloads stored."""
        return int(self._totals()[1])

    def oldest_age_s(self) -> float | None:
        """Age of the oldest waiting row (agent running time since it was stored), or None when empty."""
        row = self.store.connection.execute("SELECT born FROM outbox ORDER BY id LIMIT 1").fetchone()
        return None if row is None else max(0.0, self.running_s() - float(row[0]))

    def depth_by_kind(self) -> dict[str, int]:
        """Rows waiting, per message kind."""
        rows = self.store.connection.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall()
        return {str(k): int(n) for k, n in rows}

    def dropped(self) -> dict[str, int]:
        """Messages dropped since the state file was created, by ``<kind>:<reason>``."""
        rows = self.store.connection.execute("SELECT reason, count FROM outbox_drops").fetchall()
        return {str(r): int(c) for r, c in rows}

    # -- internals ------------------------------------------------------------

    def _tick(self, conn: sqlite3.Connection) -> float:
        """The outbox clock now, persisted inside the caller's transaction."""
        now = self.running_s()
        conn.execute("UPDATE outbox_clock SET running_s = MAX(running_s, ?) WHERE one = 1", (now,))
        return now

    def _totals(self) -> tuple[int, int]:
        row = self.store.connection.execute("SELECT rows, bytes FROM outbox_totals WHERE one = 1").fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def _enforce(self, conn: sqlite3.Connection, now: float, *, new_alert_bytes: bool) -> None:
        mono = self._clock.monotonic()
        if mono >= self._next_expire:
            self._next_expire = mono + _EXPIRE_EVERY_S
            self._expire(conn, now)
        total = int(conn.execute("SELECT bytes FROM outbox_totals WHERE one = 1").fetchone()[0])
        limit = self.config.max_bytes
        if total <= limit:
            return
        # Telemetry first, oldest first, in chunks until under the budget.
        while total > limit:
            victims = self._oldest_telemetry(conn, 256)
            if not victims:
                break
            chosen: list[tuple[int, str]] = []
            for row_id, kind, size in victims:
                if total <= limit:
                    break
                chosen.append((int(row_id), str(kind)))
                total -= int(size)
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i, _ in chosen])
            for _, kind in chosen:
                _count(conn, f"{kind}:full")
        if total > limit and new_alert_bytes:
            _count(conn, "alert:over_budget")

    @staticmethod
    def _oldest_telemetry(conn: sqlite3.Connection, limit: int) -> list[tuple[int, str, int]]:
        """The `limit` oldest non-alert rows, merged from per-kind index scans."""
        rows: list[tuple[int, str, int]] = []
        for kind in _KINDS:
            if kind != "alert":
                rows.extend(
                    (int(i), str(k), int(n))
                    for i, k, n in conn.execute(
                        "SELECT id, kind, size FROM outbox WHERE kind = ? ORDER BY id LIMIT ?", (kind, limit)
                    )
                )
        rows.sort()
        return rows[:limit]

    def _expire(self, conn: sqlite3.Connection, now: float) -> int:
        """Drop rows past their TTL on the outbox clock (`now`), oldest first, per kind by (kind, id).

        ``born`` never decreases with the row id (the outbox clock only moves forward and
        is committed with every row), so the scan stops at the first row still young.
        The cost is proportional to the rows expired, not to the rows stored.
        """
        dropped = 0
        for kind in _KINDS:
            ttl = self.config.alert_ttl_s if kind == "alert" else self.config.telemetry_ttl_s
            cutoff = now - ttl
            while True:
                rows = conn.execute(
                    "SELECT id, born FROM outbox WHERE kind = ? ORDER BY id LIMIT 256", (kind,)
                ).fetchall()
                expired = []
                for row_id, born in rows:
                    if float(born) >= cutoff:
                        break
                    expired.append((int(row_id),))
                if expired:
                    conn.executemany("DELETE FROM outbox WHERE id = ?", expired)
                    _count(conn, f"{kind}:expired", len(expired))
                    dropped += len(expired)
                if len(expired) < 256:
                    break
        return dropped


def _migrate_born(conn: sqlite3.Connection) -> float:
    """The persisted outbox clock; rows of a file written before it existed start their age now."""
    running = float(conn.execute("SELECT running_s FROM outbox_clock WHERE one = 1").fetchone()[0])
    columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(outbox)")}
    if "born" not in columns:
        conn.execute("ALTER TABLE outbox ADD COLUMN born REAL NOT NULL DEFAULT 0")
        conn.execute("UPDATE outbox SET born = ?", (running,))
    return running


def _count(conn: sqlite3.Connection, reason: str, n: int = 1) -> None:
    conn.execute(
        "INSERT INTO outbox_drops(reason, count) VALUES (?, ?) "
        "ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
        (reason, n),
    )


def _kind(value: object) -> MessageKind:
    for kind in _KINDS:
        if value == kind:
            return kind
    raise StateError(f"outbox: unknown message kind {value!r}")
