"""The agent's local state: one SQLite file (WAL, synchronous=FULL) for offsets, windows and outbox.

Exactly-once scoring rests on one rule: the read position of a stream, the state
needed to rebuild its open window and alert policy, and the outbox rows derived
from the lines read are committed in **one** transaction (`StateStore.transaction`).
A crash before the commit loses nothing (the lines are read again); a crash after
it repeats nothing (the position moved with the rows).

Modules that keep tables here (checkpoints, outbox) register their DDL with
`StateStore.migrate` and take the connection inside the caller's transaction.

Two failures of the file are told apart from the rest, because the agent survives
them (see docs/fault-model.md):

* **A full disk** (`DiskFullError`, `is_disk_full`): SQLite's "database or disk is
  full", ``ENOSPC``/``EDQUOT``, or an I/O error while the file system has no room
  left. Nothing is lost: a failed transaction is rolled back whole, and the daemon
  waits and tries again.
* **A damaged file** (`StateDamagedError`): not a database, truncated or malformed.
  `open_state` moves it aside (``agent.db.damaged-<UTC time>``, with its ``-wal`` and
  ``-shm``) and starts a fresh one: every stream is read again from the start of its
  files, which yields the same event ids (at-least-once).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import structlog

from agent import ownfiles
from agent.atomicfile import fsync_directory
from agent.errors import DiskFullError, StateDamagedError, StateError

log = structlog.get_logger("robotpm.agent")

STATE_FILE: Final = "agent.db"
DAMAGED_INFIX: Final = ".damaged-"
"""A damaged state file is renamed to ``agent.db.damaged-<UTC time>``."""

_SIDE_FILES: Final = ("-wal", "-shm")
_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_IOERR: Final = 10
_SQLITE_NOTADB: Final = 26
_NEARLY_FULL_BYTES: Final = 256 * 1024
"""An I/O error while less than this is free is taken for a full disk."""

_CHECKPOINT_DDL = """
CREATE TABLE IF NOT EXISTS stream_state (
    stream TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated REAL NOT NULL
)
"""


def free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer may still use on `directory`'s file system (None: unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_disk_full(exc: BaseException, directory: Path | None = None) -> bool:
    """Whether `exc` (or what caused it) says the file system is full.

    With `directory`, an SQLite I/O error counts too when that file system is (nearly)
    full: SQLite reports a failed write of its WAL index as "disk I/O error".
    """
    for cause in _chain(exc):
        if isinstance(cause, DiskFullError):
            return True
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(cause, sqlite3.Error):
            code = _sqlite_code(cause)
            if code == _SQLITE_FULL or "database or disk is full" in str(cause):
                return True
            if code == _SQLITE_IOERR or "disk I/O error" in str(cause):
                free = free_bytes(directory) if directory is not None else None
                if free is not None and free < _NEARLY_FULL_BYTES:
                    return True
    return False


def is_damaged(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the database file is damaged."""
    for cause in _chain(exc):
        if isinstance(cause, StateDamagedError):
            return True
        if isinstance(cause, sqlite3.DatabaseError):
            text = str(cause)
            if _sqlite_code(cause) in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or (
                "file is not a database" in text or "malformed" in text
            ):
                return True
    return False


class StateStore:
    """The SQLite state file of one agent. Not shared between processes.

    The connection is used from the daemon's thread; other threads (e.g. a
    transport callback) must not touch it. Opening raises `DiskFullError` when the
    file system is full, `StateDamagedError` when the file is not a sound database
    (with ``check``, after SQLite's ``quick_check`` of every page), `StateError` else.
    """

    def __init__(self, path: Path, *, check: bool = False) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            if check:
                verdict = self._conn.execute("PRAGMA quick_check(1)").fetchone()
                if verdict is None or verdict[0] != "ok":
                    raise StateDamagedError(
                        f"{path}: integrity check failed: {verdict[0] if verdict else '?'}"
                    )
            self._conn.execute(_CHECKPOINT_DDL)
        except (sqlite3.Error, OSError) as exc:
            self._close_quietly()
            raise classify(exc, path, "cannot open state store") from exc
        except StateDamagedError:
            self._close_quietly()
            raise
        self._lock = threading.RLock()

    @classmethod
    def in_dir(cls, state_dir: Path) -> StateStore:
        """Open (or create) the state file inside a state directory."""
        return cls(state_dir / STATE_FILE)

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for modules that keep their own tables here."""
        assert self._conn is not None
        return self._conn

    def migrate(self, *statements: str) -> None:
        """Run idempotent DDL (``CREATE … IF NOT EXISTS``)."""
        with self.transaction() as conn:
            for statement in statements:
                conn.execute(statement)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable unit of work: committed on success, rolled back on error.

        An error inside the block is re-raised as it is, after the rollback; a failed
        BEGIN or COMMIT raises `StateError` (`DiskFullError` when the disk is full).
        """
        conn = self.connection
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise classify(exc, self.path, "cannot begin a transaction") from exc
            try:
                yield conn
            except BaseException:
                self._rollback()
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise classify(exc, self.path, "commit failed") from exc

    def load_stream_state(self, stream: str) -> dict[str, Any] | None:
        """The last committed state of a stream (JSON object), or None."""
        row = self.connection.execute("SELECT state FROM stream_state WHERE stream = ?", (stream,)).fetchone()
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
        """Close the connection (a checkpoint of the WAL happens on close, if there is room)."""
        with self._lock:
            self._close_quietly()

    def _rollback(self) -> None:
        # SQLite rolls a transaction back by itself after some errors (a full disk among
        # them): a ROLLBACK then fails with "no transaction is active" and would hide the cause.
        conn = self.connection
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _close_quietly(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None


def open_state(state_dir: Path, *, wall: float) -> tuple[StateStore, Path | None]:
    """Open the state file of `state_dir`, checking every page; a damaged one is moved aside first.

    Returns the store and where a damaged file went (None if there was none). Raises
    `DiskFullError` while the file system is full (nothing is moved or deleted then).
    A FIFO, device or symlink in the state file's place (SQLite would block reading it)
    counts as damaged; one in place of a WAL file is moved aside alone (it held no data).
    """
    path = state_dir / STATE_FILE
    for suffix in _SIDE_FILES:
        try:
            ownfiles.move_aside(Path(f"{path}{suffix}"), wall)
        except OSError as exc:
            raise StateError(f"{path}{suffix}: cannot move a non-regular file aside: {exc}") from exc
    kind = ownfiles.not_regular(path)
    if kind is not None:
        log.error("own_file_refused", path=str(path), found=kind, action="moved aside as damaged")
        moved = move_aside(path, wall)
        return StateStore(path, check=True), moved
    try:
        return StateStore(path, check=True), None
    except StateDamagedError:
        pass
    moved = move_aside(path, wall)
    return StateStore(path, check=True), moved


def move_aside(path: Path, wall: float) -> Path:
    """Rename the state file and its WAL files to ``<name>.damaged-<UTC time>``; returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))
    target = path.with_name(f"{path.name}{DAMAGED_INFIX}{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{DAMAGED_INFIX}{stamp}-{n}")
    try:
        for suffix in ("", *_SIDE_FILES):
            source = Path(f"{path}{suffix}")
            if os.path.lexists(source):  # a dangling symlink too
                os.replace(source, Path(f"{target}{suffix}"))
        fsync_directory(path.parent)
    except OSError as exc:
        raise StateError(f"{path}: cannot move the damaged state file aside: {exc}") from exc
    return target


def classify(exc: BaseException, path: Path, doing: str) -> StateError:
    """A `StateError` for `exc`: `DiskFullError` or `StateDamagedError` when it is one of those."""
    message = f"{path}: {doing}: {exc}"
    if is_disk_full(exc, path.parent):
        return DiskFullError(message)
    if is_damaged(exc):
        return StateDamagedError(message)
    return StateError(message)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _sqlite_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    return None if code is None else int(code) & 0xFF


class DiskSpace:
    """Whether the state directory's disk is full: since when, and when to try to write again.

    The first failure is logged as ``disk_full`` (an error), its end as ``disk_space_back``;
    tries back off from 1 s to ``max_retry_s``.
    """

    def __init__(self, directory: Path, *, max_retry_s: float = 10.0) -> None:
        self._directory = directory
        self._max_retry_s = max_retry_s
        self.since: float | None = None
        self._next_try = 0.0
        self._delay = 1.0
        self._detail = ""

    @property
    def full(self) -> bool:
        """Whether the last write failed for want of space."""
        return self.since is not None

    def failed(self, now: float, exc: BaseException) -> float:
        """A write failed for want of space; returns how long to wait before the next try."""
        if self.since is None:
            self.since, self._delay = now, 1.0
            free = free_bytes(self._directory)
            log.error("disk_full", directory=str(self._directory), free_bytes=free, error=str(exc))
        else:
            self._delay = min(self._max_retry_s, self._delay * 2)
        self._detail = str(exc)
        self._next_try = now + self._delay
        return self._delay

    def due(self, now: float) -> bool:
        """Whether to try to write now (always, unless the disk was found full a moment ago)."""
        return self.since is None or now >= self._next_try

    def recovered(self, now: float) -> None:
        """A write worked again."""
        if self.since is not None:
            log.info("disk_space_back", directory=str(self._directory), after_s=round(now - self.since, 1))
        self.since = None

    def describe(self) -> str:
        """The fault, in one line."""
        free = free_bytes(self._directory)
        return (
            f"disk full: {self._directory} has {free if free is not None else '?'} bytes free "
            f"({self._detail}); not reading, nothing is lost, delivering what the outbox holds"
        )
