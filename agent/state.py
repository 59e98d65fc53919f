"""The agent's local state: one SQLite file (WAL, synchronous=FULL) for offsets, windows and outbox.

Exactly-once scoring rests on one rule: the read position of a stream, the state
needed to rebuild its open window and alert policy, and the outbox rows derived
from the lines read are committed in **one** transaction (`StateStore.transaction`).
A crash before the commit loses nothing (the lines are read again); a crash after
it repeats nothing (the position moved with the rows).

Modules that keep tables here (checkpoints, outbox) register their DDL with
`StateStore.migrate` and take the connection inside the caller's transaction.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.errors import StateError

STATE_FILE = "agent.db"

_CHECKPOINT_DDL = """
CREATE TABLE IF NOT EXISTS stream_state (
    stream TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated REAL NOT NULL
)
"""


class StateStore:
    """The SQLite state file of one agent. Not shared between processes.

    The connection is used from the daemon's thread; other threads (e.g. a
    transport callback) must not touch it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute(_CHECKPOINT_DDL)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"{path}: cannot open state store: {exc}") from exc
        self._lock = threading.RLock()

    @classmethod
    def in_dir(cls, state_dir: Path) -> StateStore:
        """Open (or create) the state file inside a state directory."""
        return cls(state_dir / STATE_FILE)

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for modules that keep their own tables here."""
        return self._conn

    def migrate(self, *statements: str) -> None:
        """Run idempotent DDL (``CREATE … IF NOT EXISTS``)."""
        with self.transaction() as conn:
            for statement in statements:
                conn.execute(statement)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable unit of work: committed on success, rolled back on error."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: cannot begin a transaction: {exc}") from exc
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: commit failed: {exc}") from exc

    def load_stream_state(self, stream: str) -> dict[str, Any] | None:
        """The last committed state of a stream (JSON object), or None."""
        row = self._conn.execute("SELECT state FROM stream_state WHERE stream = ?", (stream,)).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except json.JSONDecodeError as exc:
            raise StateError(f"{self.path}: state of stream {stream!r} is corrupt: {exc}") from exc
        if not isinstance(value, dict):
            raise StateError(f"{self.path}: state of stream {stream!r} is not an object")
        return value

    @staticmethod
    def save_stream_state(conn: sqlite3.Connection, stream: str, state: dict[str, Any], now: float) -> None:
        """Write a stream's state; call inside `transaction` together with its outbox rows."""
        conn.execute(
            "INSERT INTO stream_state(stream, state, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(stream) DO UPDATE SET state = excluded.state, updated = excluded.updated",
            (stream, json.dumps(state, separators=(",", ":")), now),
        )

    def close(self) -> None:
        """Close the connection (a checkpoint of the WAL happens on close)."""
        with self._lock:
            self._conn.close()
