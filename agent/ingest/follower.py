r"""Follow one stream's log files and hand out complete lines, each exactly once.

`StreamFollower.read` returns `LineBlock`s: runs of complete lines (each ending
in ``\n``) with the file and byte offset they came from. `StreamFollower.state`
describes the position of everything returned so far as JSON; the daemon commits
it in the same SQLite transaction as the outbox rows derived from those lines,
and after a restart `StreamFollower.restore` resumes exactly there.

Guarantees (reliability-anchors §1.4), for files the stream can see:

* **Partial lines** are never returned and never checkpointed past: the position
  stays before an unterminated last line until its newline arrives, also across
  a restart.
* **Rotation by rename** keeps the old file open (by inode) and drains it to its
  end before its successor is read (order rule in `agent.ingest.identity`). A file
  that left the directory (renamed away, deleted, symlink re-pointed) is closed
  only once it is read to the end and has stayed unchanged for
  ``release_after_s``: a rotated file with unread bytes is never abandoned.
* **Truncation and copytruncate** (new content smaller, the same size or larger)
  are found by the offset marker, checked whenever the file changes. The old
  content's identity is kept as a *ghost*; copytruncate's copy (a new inode
  whose head and marker match the ghost) resumes at the ghost's offset, and the
  truncated file is read from 0. NUL bytes at a line start (a stale writer after
  copytruncate) are skipped.
* **While stopped**: saved files are re-found by inode and verified by content,
  else by content alone (rotated, copied); a saved inode whose content changed
  (copytruncate, truncation, inode reuse) is read from 0.
* **Over-long lines** (> ``max_line_bytes``) are returned as `RejectedLine`
  (reason ``too_long``) and skipped up to their newline; reading goes on. The
  unterminated last line of a rotated file that stayed unchanged for
  ``release_after_s`` is rejected as ``unterminated``.

What cannot be saved: bytes of a file deleted while the agent was stopped, or
destroyed by truncation before they were read. Such losses are counted
(``lost_bytes``) where they can be seen.

Threads: `read`, `state`, `restore` and `close` are for one thread (the daemon's);
the watcher threads only set flags.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import IngestConfig
from agent.contract.records import RejectedLine
from agent.contract.streams import StreamConfig
from agent.errors import IngestError
from agent.filewatch.watcher import Signature, Watcher
from agent.ingest.identity import (
    HEAD_BYTES,
    MARKER_BYTES,
    Candidate,
    ContentMark,
    digest,
    list_candidates,
    order_key,
    pread_exact,
)

STATE_VERSION = 1
GHOST_TTL_S = 60.0
"""How long the identity of truncated or vanished content waits for its copy to appear."""
MAX_GHOSTS = 64
MAX_LISTINGS = 5
"""A scan lists the directory until two listings agree, at most this many times."""
RAW_KEEP = 256
"""How many bytes of a rejected line are kept for the quarantine."""


@dataclass(frozen=True, slots=True)
class LineBlock:
    """Complete lines read from one file, with where they came from."""

    file_key: str
    """Stable identity of the file's content (survives renames and restarts; new after truncation)."""
    path: Path
    """The path the file was read from (its current name)."""
    data: bytes
    """Complete lines only, each ending with ``b"\\n"``; never the CSV header; may be empty."""
    offset: int
    """Byte offset of ``data[0]`` in the file."""
    header: bytes | None
    """The file's CSV header line (no newline) for ``format="csv"``, else None."""
    rejected: tuple[RejectedLine, ...] = ()
    """Lines refused while reading (too long, unterminated, no header), absolute offsets."""


@dataclass(slots=True)
class _Ghost:
    """The identity of content that vanished from its inode, waiting for a copy to claim it."""

    mark: ContentMark
    header: bytes | None
    born: float
    data_start: int = 0
    """Where the data lines began (after the file's own header line, if it had one)."""


@dataclass(slots=True)
class _Pending:
    """A new file that may be a copy of known content: not read until that is decided."""

    kind: str  # "ghost" | "copy"
    ghost: _Ghost | None
    source_key: str | None
    size: int
    since: float


class _File:
    """One open file of the stream and how far it was consumed."""

    __slots__ = (
        "data_start",
        "dev",
        "fd",
        "gone",
        "head",
        "header",
        "header_pending",
        "ino",
        "key",
        "last_change",
        "last_mtime",
        "last_size",
        "marker",
        "offset",
        "path",
        "pending",
        "rank",
        "skipping",
    )

    def __init__(self, fd: int, dev: int, ino: int, path: str, rank: int, csv: bool, now: float) -> None:
        self.fd = fd
        self.dev = dev
        self.ino = ino
        self.path = path
        self.rank = rank
        self.key = _new_key(dev, ino)
        self.offset = 0
        self.head = b""
        self.marker = b""
        self.header: bytes | None = None
        self.header_pending = csv
        self.skipping = False
        self.data_start = 0
        self.gone = False
        self.pending: _Pending | None = None
        self.last_size = -1
        self.last_mtime = -1
        self.last_change = now

    def mark(self) -> ContentMark:
        return ContentMark(
            self.offset, len(self.head), digest(self.head), len(self.marker), digest(self.marker)
        )

    def consume(self, buf: bytes) -> None:
        """Move past `buf`, the bytes at the current offset."""
        if self.offset < HEAD_BYTES:
            self.head += buf[: HEAD_BYTES - self.offset]
        if len(buf) >= MARKER_BYTES:
            self.marker = buf[-MARKER_BYTES:]
        else:
            self.marker = (self.marker + buf)[-MARKER_BYTES:]
        self.offset += len(buf)

    def restart(self, csv: bool) -> None:
        """Forget what was consumed: the file now holds new content, read from 0."""
        self.key = _new_key(self.dev, self.ino)
        self.offset = 0
        self.head = b""
        self.marker = b""
        self.header_pending = csv
        self.skipping = False
        self.data_start = 0
        self.pending = None


class StreamFollower:
    """Follows the files of one stream (directory + patterns) and returns complete lines in order."""

    def __init__(
        self,
        stream: StreamConfig,
        ingest: IngestConfig,
        wakeup: threading.Event,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._ingest = ingest
        self._wakeup = wakeup
        self._clock = clock
        self._directory = str(stream.directory)
        self._patterns = tuple(stream.patterns)
        self._csv = stream.format == "csv"
        schema = stream.record_schema()
        self._delimiter = schema.delimiter.encode()
        self._ts_name = stream.timestamp_field.encode()
        self._max_line = ingest.max_line_bytes
        self._chunk = max(ingest.read_chunk_bytes, self._max_line + 2)
        self._release_after = ingest.release_after_s
        self._files: dict[tuple[int, int], _File] = {}
        self._ghosts: list[_Ghost] = []
        self._saved: dict[tuple[int, int], dict[str, Any]] = {}
        self._last_header: bytes | None = None
        self._last_scan = float("-inf")
        self._scan_due = True
        self._watcher: Watcher | None = None
        self._closed = False
        self._path_objects: dict[str, Path] = {}
        self.counters: dict[str, int] = {
            "bytes": 0,
            "lines_too_long": 0,
            "unterminated": 0,
            "no_header": 0,
            "nul_bytes_skipped": 0,
            "truncations": 0,
            "copies_claimed": 0,
            "copies_skipped": 0,
            "files_opened": 0,
            "files_released": 0,
            "lost_bytes": 0,
            "scans": 0,
            "state_discarded": 0,
            "listings_repeated": 0,
        }
        """Monotonic counts, for status and metrics."""

    # ------------------------------------------------------------------ public API

    def restore(self, state: dict[str, Any] | None) -> None:
        """Resume from a `state()` saved earlier; None starts afresh.

        A damaged or foreign state is discarded (counted as ``state_discarded``) and every
        file is read from its start: duplicates are possible then, loss is not.

        Files are matched on the next `read`, by inode and content; see the module docstring.
        """
        self._close_files()
        self._ghosts.clear()
        self._saved.clear()
        self._last_header = None
        self._scan_due = True
        if not state:
            return
        if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
            self.counters["state_discarded"] += 1
            return
        now = self._clock()
        try:
            for entry in state.get("files", []):
                self._saved[(int(entry["dev"]), int(entry["ino"]))] = dict(entry)
            for entry in state.get("ghosts", []):
                self._ghosts.append(
                    _Ghost(
                        _mark_from(entry),
                        _header_from(entry.get("header")),
                        now,
                        int(entry.get("data_start", 0)),
                    )
                )
            self._last_header = _header_from(state.get("last_header"))
        except (KeyError, TypeError, ValueError, AttributeError):
            # a damaged checkpoint must not stop the agent: start afresh (duplicates, never loss)
            self._saved.clear()
            self._ghosts.clear()
            self._last_header = None
            self.counters["state_discarded"] += 1

    def start(self) -> None:
        """Start watching: inotify (unless ``watch = "poll"``) plus the safety-net stat poll."""
        if self._watcher is not None:
            return
        self._watcher = Watcher(
            Path(self._directory),
            self._ingest.watch,
            self._ingest.poll_interval_s,
            self._ingest.coalesce_ms / 1000.0,
            self._wakeup,
            self._signature,
            name=self._stream.name,
        )
        self._watcher.start()

    def wake_after(self, n_bytes: int | None) -> None:
        """Wake the reader for appends only once about `n_bytes` more than was read have arrived.

        For a reader that cannot use fewer (the agent holds lines too few to complete a
        window). Applies while the stream has one settled file open; otherwise, and with
        None, every batch of writes wakes the reader. Directory changes always do.
        """
        watcher = self._watcher
        if watcher is None:
            return
        files = list(self._files.values())
        if n_bytes is None or len(files) != 1 or self._ghosts:
            watcher.gate_wakeups(None)
            return
        f = files[0]
        if f.pending is not None or f.skipping or f.header_pending or f.gone:
            watcher.gate_wakeups(None)
            return
        watcher.gate_wakeups(f.path, f.offset + n_bytes)

    @property
    def watch_mode(self) -> str:
        """``inotify`` or ``poll`` once started (``auto`` degrades to poll when inotify fails)."""
        return self._watcher.mode if self._watcher is not None else "stopped"

    def read(self, max_bytes: int) -> list[LineBlock]:
        """Everything readable now, in stream order, about `max_bytes` of line data at most.

        Never blocks. A file earlier in the order is read to its end (or the budget) before
        a later one is touched.
        """
        if self._closed:
            raise IngestError(f"stream {self._stream.name}: follower is closed")
        now = self._clock()
        out: list[LineBlock] = []
        scan = self._need_scan(now)
        self._check_open_files(now, verify_all=scan)
        if scan or self._scan_due:  # a truncation just seen: copytruncate's copy is already there
            self._scan(now)
            # The scan stat'ed the files it found just now. Look at the files open before it
            # again: a rotation in between (last lines, rename, new file's lines) would otherwise
            # have the old file read to a size older than its successor's, and its last lines late.
            self._check_open_files(now, verify_all=False)
            if self._scan_due:
                self._scan(now)
        self._resolve_pending(now)
        self._expire(now, out)
        budget = max(1, max_bytes)
        ordered = sorted(
            (f for f in self._files.values() if f.pending is None),
            key=lambda f: order_key(f.last_mtime, f.rank, f.path),
        )
        for f in ordered:
            if budget <= 0:
                self._wakeup.set()  # more to read: come back at once
                break
            budget -= self._read_file(f, budget, out)
        return out

    def state(self) -> dict[str, Any]:
        """A JSON-serialisable description of the position of everything `read` returned so far."""
        files = []
        for f in self._files.values():
            if f.pending is not None:
                continue
            entry = _mark_to(f.mark())
            entry.update(
                key=f.key,
                dev=f.dev,
                ino=f.ino,
                path=f.path,
                rank=f.rank,
                header=_header_to(f.header),
                header_pending=f.header_pending,
                skipping=f.skipping,
                data_start=f.data_start,
                gone=f.gone,
            )
            files.append(entry)
        # saved entries not matched yet (restore() then state() before any read) stay as they were
        files.extend(self._saved.values())
        ghosts = [
            {**_mark_to(g.mark), "header": _header_to(g.header), "data_start": g.data_start}
            for g in self._ghosts
        ]
        return {
            "v": STATE_VERSION,
            "files": files,
            "ghosts": ghosts,
            "last_header": _header_to(self._last_header),
        }

    def close(self) -> None:
        """Stop watching, join the threads, close the files. Idempotent."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self._close_files()
        self._closed = True

    def open_identities(self) -> set[tuple[int, int]]:
        """(device, inode) of every file held open: these can still be drained if deleted."""
        return set(self._files)

    def stats(self) -> dict[str, int]:
        """Counters plus open files, ghosts, and the watcher's file events and wakeups."""
        watcher = self._watcher
        return {
            **self.counters,
            "open_files": len(self._files),
            "ghosts": len(self._ghosts),
            "file_events": watcher.events if watcher is not None else 0,
            "wakeups": watcher.wakeups if watcher is not None else 0,
            "wakeups_gated": watcher.gated if watcher is not None else 0,
        }

    # ------------------------------------------------------------------ discovery

    def _signature(self) -> Signature:
        return tuple(
            (c.path, c.ino, c.size, c.mtime_ns)
            for c in sorted(list_candidates(self._directory, self._patterns), key=lambda c: c.path)
        )

    def _need_scan(self, now: float) -> bool:
        watcher = self._watcher
        if watcher is None:
            return True  # nobody watches: list the directory on every read
        if watcher.take_rescan():
            self._scan_due = True
        interval = self._ingest.rescan_interval_s
        if watcher.mode == "poll":
            interval = min(interval, self._ingest.poll_interval_s)
        return self._scan_due or now - self._last_scan >= interval

    def _scan(self, now: float) -> None:
        self._scan_due = False
        self._last_scan = now
        self.counters["scans"] += 1
        candidates = self._stable_listing()
        candidates.sort(key=lambda c: (c.rank != 0, c.path))  # a name that matches itself wins for hardlinks
        seen: set[tuple[int, int]] = set()
        new: list[Candidate] = []
        for c in candidates:
            ident = (c.dev, c.ino)
            if ident in seen:
                continue
            seen.add(ident)
            known = self._files.get(ident)
            if known is not None:
                known.path, known.rank, known.gone = c.path, c.rank, False
                continue
            new.append(c)
        for ident, f in self._files.items():
            if ident not in seen and not f.gone:
                f.gone = True
                f.last_change = now
        if self._saved:
            new = self._match_saved(new, now)
        # saved files not in the directory: try where they were (e.g. an old symlink target)
        for ident, saved in list(self._saved.items()):
            del self._saved[ident]
            if not self._adopt_by_path(saved, ident, now):
                self._ghost_from_saved(saved, now)
        new.sort(key=lambda c: order_key(c.mtime_ns, c.rank, c.path))
        for c in new:
            self._add_new(c, now)
        if self._watcher is not None:
            self._watcher.watch_extra(self._symlink_dirs(candidates))

    def _stable_listing(self) -> list[Candidate]:
        """The stream's files, listed until two listings in a row name the same files.

        Listing a directory is not atomic: a rotation's renames during it can hide a file
        (its name listed before the rename and stat'ed after it finds its successor). A
        file missed that way would be found by the next scan, after its successor's lines.
        """
        listing = list_candidates(self._directory, self._patterns)
        for _ in range(MAX_LISTINGS - 1):
            again = list_candidates(self._directory, self._patterns)
            if _names(again) == _names(listing):
                return again
            self.counters["listings_repeated"] += 1
            listing = again
        return listing

    def _symlink_dirs(self, candidates: list[Candidate]) -> set[str]:
        """Directories where symlinked files of the stream really live (writes there need a watch too)."""
        dirs = set()
        here = os.path.realpath(self._directory)
        for c in candidates:
            if os.path.islink(c.path):
                target_dir = os.path.dirname(os.path.realpath(c.path))
                if target_dir != here:
                    dirs.add(target_dir)
        return dirs

    def _open(self, path: str) -> tuple[int, os.stat_result] | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # vanished or unreadable: the next scan tries again
            return None
        try:
            return fd, os.fstat(fd)
        except OSError:
            os.close(fd)
            return None

    def _match_saved(self, candidates: list[Candidate], now: float) -> list[Candidate]:
        """Give saved positions (after a restore) to the files that hold their content.

        The longest verified match wins (a saved file renamed, or copied by copytruncate,
        is found by content); the same inode breaks ties. A match covering nothing past a
        CSV header only counts for the same inode. Returns the candidates left unmatched.
        """
        opened: dict[str, tuple[int, os.stat_result]] = {}
        scored: list[tuple[tuple[int, bool], int, Candidate, tuple[int, int]]] = []
        for c in candidates:
            handle = self._open(c.path)
            if handle is None:
                continue
            opened[c.path] = handle
            fd, st = handle
            for ident, saved in self._saved.items():
                mark = _mark_from(saved)
                same = (st.st_dev, st.st_ino) == ident
                strong = mark.offset > int(saved.get("data_start", 0))
                if (strong or same) and mark.matches(fd, st.st_size):
                    scored.append(((mark.offset if strong else -1, same), len(scored), c, ident))
        scored.sort(key=lambda item: (item[0], -item[1]), reverse=True)
        taken: set[str] = set()
        for _, _, c, ident in scored:
            if c.path in taken or ident not in self._saved:
                continue
            fd, st = opened.pop(c.path)
            self._adopt_open(self._saved.pop(ident), fd, st, c.path, c.rank, now)
            taken.add(c.path)
        for fd, _ in opened.values():
            os.close(fd)
        return [c for c in candidates if c.path not in taken]

    def _adopt(self, saved: dict[str, Any], path: str, rank: int, now: float) -> bool:
        """Resume a saved file at its saved offset if it is still the same inode and content."""
        opened = self._open(path)
        if opened is None:
            return False
        fd, st = opened
        if (st.st_dev, st.st_ino) != (int(saved["dev"]), int(saved["ino"])) or (st.st_dev, st.st_ino) in (
            self._files
        ):
            os.close(fd)
            return False
        if not _mark_from(saved).matches(fd, st.st_size):
            os.close(fd)
            return False
        self._adopt_open(saved, fd, st, path, rank, now)
        return True

    def _adopt_open(
        self, saved: dict[str, Any], fd: int, st: os.stat_result, path: str, rank: int, now: float
    ) -> None:
        mark = _mark_from(saved)
        f = _File(fd, st.st_dev, st.st_ino, path, rank, self._csv, now)
        if (st.st_dev, st.st_ino) == (int(saved["dev"]), int(saved["ino"])):
            f.key = str(saved.get("key") or f.key)
        else:
            self.counters["copies_claimed"] += 1
        f.offset = mark.offset
        f.head = pread_exact(fd, mark.head_len, 0)
        f.marker = pread_exact(fd, mark.marker_len, mark.offset - mark.marker_len)
        f.header = _header_from(saved.get("header"))
        f.header_pending = bool(saved.get("header_pending", False)) and self._csv
        f.skipping = bool(saved.get("skipping", False))
        f.data_start = int(saved.get("data_start", 0))
        f.last_size, f.last_mtime = st.st_size, st.st_mtime_ns
        self._files[(st.st_dev, st.st_ino)] = f
        self.counters["files_opened"] += 1

    def _adopt_by_path(self, saved: dict[str, Any], ident: tuple[int, int], now: float) -> bool:
        path = str(saved.get("path", ""))
        if not path or ident in self._files:
            return False
        adopted = self._adopt(saved, path, int(saved.get("rank", 0)), now)
        if adopted:
            self._files[ident].gone = True
        return adopted

    def _ghost_from_saved(self, saved: dict[str, Any], now: float) -> None:
        mark = _mark_from(saved)
        if mark.offset > 0:
            self._add_ghost(
                _Ghost(mark, _header_from(saved.get("header")), now, int(saved.get("data_start", 0)))
            )

    def _add_ghost(self, ghost: _Ghost) -> None:
        self._ghosts.append(ghost)
        del self._ghosts[:-MAX_GHOSTS]

    def _add_new(self, c: Candidate, now: float) -> None:
        opened = self._open(c.path)
        if opened is None:
            return
        fd, st = opened
        ident = (st.st_dev, st.st_ino)
        if ident in self._files:
            os.close(fd)
            return
        f = _File(fd, st.st_dev, st.st_ino, c.path, c.rank, self._csv, now)
        f.last_size, f.last_mtime = st.st_size, st.st_mtime_ns
        self._files[ident] = f
        self.counters["files_opened"] += 1
        self._classify(f, st.st_size, now)

    def _classify(self, f: _File, size: int, now: float) -> None:
        """Decide whether a new file is fresh content, or a copy of content already consumed."""
        # the most specific identity first; one that covers no more than a CSV header says nothing
        for ghost in sorted(self._ghosts, key=lambda g: g.mark.offset, reverse=True):
            mark = ghost.mark
            if mark.offset <= ghost.data_start or size < mark.head_len or not mark.head_matches(f.fd):
                continue
            if size >= mark.offset:
                if mark.marker_matches(f.fd):
                    self._claim(f, ghost)
                    return
                continue
            f.pending = _Pending("ghost", ghost, None, size, now)
            return
        for other in self._files.values():
            if other is f or other.pending is not None or not self._has_data_head(other):
                continue
            if size >= len(other.head) and pread_exact(f.fd, len(other.head), 0) == other.head:
                f.pending = _Pending("copy", None, other.key, size, now)
                return

    def _has_data_head(self, f: _File) -> bool:
        """Whether the consumed head holds more than a CSV header (enough to recognise a copy)."""
        return len(f.head) > f.data_start

    def _claim(self, f: _File, ghost: _Ghost) -> None:
        mark = ghost.mark
        f.offset = mark.offset
        f.head = pread_exact(f.fd, mark.head_len, 0)
        f.marker = pread_exact(f.fd, mark.marker_len, mark.offset - mark.marker_len)
        f.header = ghost.header
        f.header_pending = False
        f.data_start = ghost.data_start
        f.pending = None
        if ghost in self._ghosts:
            self._ghosts.remove(ghost)
        self.counters["copies_claimed"] += 1

    def _resolve_pending(self, now: float) -> None:
        for f in list(self._files.values()):
            pending = f.pending
            if pending is None:
                continue
            try:
                size = os.fstat(f.fd).st_size
            except OSError:
                continue
            if pending.kind == "ghost":
                ghost = pending.ghost
                assert ghost is not None
                if ghost not in self._ghosts:
                    f.pending = None
                    self._classify(f, size, now)
                elif size >= ghost.mark.offset:
                    f.pending = None
                    if ghost.mark.marker_matches(f.fd):
                        self._claim(f, ghost)
                elif size != pending.size:
                    pending.size, pending.since = size, now
                elif now - pending.since >= self._release_after:
                    # a shorter copy of content we consumed in full: nothing new in it
                    f.pending = None
                    self._skip_to(f, size, ghost.header, ghost.data_start)
                continue
            source = next((o for o in self._files.values() if o.key == pending.source_key), None)
            if source is None:
                f.pending = None
                self._classify(f, size, now)
            elif size != pending.size:
                pending.size, pending.since = size, now
            elif now - pending.since >= self._release_after:
                f.pending = None
                if _same_prefix(f.fd, source.fd, size):
                    self._skip_to(
                        f, size, source.header, source.data_start
                    )  # a plain copy: its lines come from the source
                    self.counters["copies_skipped"] += 1

    def _skip_to(self, f: _File, size: int, header: bytes | None, data_start: int) -> None:
        """Mark a file as consumed up to `size` without returning its lines."""
        f.data_start = min(data_start, size)
        f.offset = size
        f.head = pread_exact(f.fd, min(HEAD_BYTES, size), 0)
        f.marker = pread_exact(f.fd, min(MARKER_BYTES, size), size - min(MARKER_BYTES, size))
        f.header = header
        f.header_pending = False

    # ------------------------------------------------------------------ change detection

    def _check_open_files(self, now: float, verify_all: bool) -> None:
        """Notice growth, truncation and replaced content (copytruncate) of the open files.

        The offset marker is checked when a file changed, and for every file when
        `verify_all` (each rescan), which catches a same-size rewrite within one mtime tick.
        """
        for f in self._files.values():
            if f.pending is not None:
                continue
            try:
                st = os.fstat(f.fd)
            except OSError:
                continue
            size, mtime = st.st_size, st.st_mtime_ns
            if size == f.last_size and mtime == f.last_mtime and not verify_all:
                continue
            if size != f.last_size or mtime != f.last_mtime:
                f.last_size, f.last_mtime, f.last_change = size, mtime, now
            if size < f.offset:
                self._restart(f, now, "truncated")
            elif f.marker and pread_exact(f.fd, len(f.marker), f.offset - len(f.marker)) != f.marker:
                self._restart(f, now, "replaced")

    def _restart(self, f: _File, now: float, why: str) -> None:
        self._add_ghost(_Ghost(f.mark(), f.header, now, f.data_start))
        if f.header is not None:
            self._last_header = f.header
        f.restart(self._csv)
        self.counters["truncations"] += 1
        self._scan_due = True  # the copy of copytruncate may already be there

    def _expire(self, now: float, out: list[LineBlock]) -> None:
        """Drop old ghosts; settle quiet rotated files; close drained files that left the directory.

        A rotated (or vanished) file that stayed unchanged for ``release_after_s`` has
        nothing more coming: what is left after its last newline is an unterminated
        line (rejected as ``unterminated``), the rest of an over-long line, or NULs.
        """
        self._ghosts = [g for g in self._ghosts if now - g.born < GHOST_TTL_S]
        for ident, f in list(self._files.items()):
            if f.pending is not None or now - f.last_change < self._release_after:
                continue
            if not (f.gone or f.rank > 0):
                continue
            size = f.last_size
            if size > f.offset:
                if f.skipping:
                    self._consume_to(f, size)  # the tail of a line already rejected as too long
                elif size - f.offset > self._max_line:
                    continue  # lines read() has not reached yet (a long catch-up): never skip them
                else:
                    rest = pread_exact(f.fd, size - f.offset, f.offset)
                    if b"\n" in rest:
                        continue  # complete lines not read yet (budget): read() takes them first
                    if rest.strip(b"\x00"):
                        reject = RejectedLine(
                            f.offset,
                            len(rest),
                            "unterminated",
                            "last line of a rotated file never got its newline",
                            rest[:RAW_KEEP],
                        )
                        self.counters["unterminated"] += 1
                        out.append(LineBlock(f.key, self._path(f), b"", f.offset, self._header(f), (reject,)))
                    f.consume(rest)
                f.skipping = f.header_pending = False
            if f.gone and f.offset >= size:
                os.close(f.fd)
                del self._files[ident]
                self.counters["files_released"] += 1

    def _consume_to(self, f: _File, size: int) -> None:
        while f.offset < size:
            chunk = os.pread(f.fd, min(self._chunk, size - f.offset), f.offset)
            if not chunk:
                break
            f.consume(chunk)

    # ------------------------------------------------------------------ reading

    def _path(self, f: _File) -> Path:
        """The file's current path as a `Path` (built once per name: this runs on every read)."""
        path = self._path_objects.get(f.path)
        if path is None:
            if len(self._path_objects) > 256:
                self._path_objects.clear()
            path = self._path_objects[f.path] = Path(f.path)
        return path

    def _header(self, f: _File) -> bytes | None:
        if not self._csv:
            return None
        return f.header if f.header is not None else self._last_header

    def _looks_like_header(self, line: bytes) -> bool:
        return self._ts_name in (field.strip() for field in line.split(self._delimiter))

    def _read_file(self, f: _File, budget: int, out: list[LineBlock]) -> int:
        """Read complete lines of one file; returns the line bytes used from the budget."""
        size = f.last_size
        used = 0
        while f.offset < size and used < budget:
            want = min(size - f.offset, self._chunk)
            if budget - used < want:
                want = max(budget - used, min(size - f.offset, self._max_line + 2))
            try:
                data = os.pread(f.fd, want, f.offset)
            except OSError as exc:
                raise IngestError(f"{f.path}: read failed: {exc}") from exc
            if not data:
                break
            self.counters["bytes"] += len(data)
            if f.skipping:
                newline = data.find(b"\n")
                if newline < 0:
                    f.consume(data)
                else:
                    f.consume(data[: newline + 1])
                    f.skipping = False
                continue
            if data[0] == 0:
                stripped = data.lstrip(b"\x00")
                skipped = len(data) - len(stripped)
                self.counters["nul_bytes_skipped"] += skipped
                f.consume(data[:skipped])
                continue
            if f.header_pending:
                if not self._take_header(f, data, out):
                    break
                continue
            last = data.rfind(b"\n")
            if last < 0:
                if len(data) > self._max_line:
                    self._too_long(f, data, out, closed=False)
                    continue
                break  # a partial line: wait for its newline
            complete = data[: last + 1]
            self._emit(f, complete, out)
            used += len(complete)
        return used

    def _take_header(self, f: _File, data: bytes, out: list[LineBlock]) -> bool:
        """Take the CSV header line at the file's start; False while it is incomplete."""
        newline = data.find(b"\n")
        if newline < 0:
            if len(data) > self._max_line:
                f.header_pending = False
                self._too_long(f, data, out, closed=False)
                return True
            return False
        line = data[:newline].rstrip(b"\r").lstrip(b"\x00")
        f.header_pending = False
        if self._looks_like_header(line):
            f.header = line
            self._last_header = line
            f.consume(data[: newline + 1])
            f.data_start = f.offset
        elif f.header is None:
            f.header = self._last_header  # a writer that went on after truncation, without a header
        return True

    def _too_long(self, f: _File, data: bytes, out: list[LineBlock], *, closed: bool) -> None:
        reject = RejectedLine(
            f.offset,
            len(data),
            "too_long",
            f"line longer than {self._max_line} bytes; skipped up to its newline",
            data[:RAW_KEEP],
        )
        self.counters["lines_too_long"] += 1
        out.append(LineBlock(f.key, self._path(f), b"", f.offset, self._header(f), (reject,)))
        f.consume(data)
        f.skipping = not closed

    def _emit(self, f: _File, complete: bytes, out: list[LineBlock]) -> None:
        """Return the complete lines at f.offset, splitting out over-long ones, and move past them."""
        header = self._header(f)
        path = self._path(f)
        base = f.offset
        if self._csv and header is None:
            out.append(LineBlock(f.key, path, b"", base, None, tuple(self._no_header(complete, base))))
            f.consume(complete)
            return
        limit = self._max_line
        n = len(complete)
        if n <= limit + 1:
            out.append(LineBlock(f.key, path, complete, base, header))
            f.consume(complete)
            return
        rejected: list[RejectedLine] = []
        segment_start = pos = 0
        while n - pos > limit + 1:
            newline = complete.rfind(b"\n", pos, pos + limit + 1)
            if newline >= 0:
                pos = newline + 1
                continue
            end = complete.find(b"\n", pos)
            if pos > segment_start:
                out.append(LineBlock(f.key, path, complete[segment_start:pos], base + segment_start, header))
            rejected.append(
                RejectedLine(
                    base + pos,
                    end - pos,
                    "too_long",
                    f"line of {end - pos} bytes is longer than {limit}",
                    complete[pos : pos + RAW_KEEP],
                )
            )
            self.counters["lines_too_long"] += 1
            pos = segment_start = end + 1
        out.append(
            LineBlock(f.key, path, complete[segment_start:], base + segment_start, header, tuple(rejected))
        )
        f.consume(complete)

    def _no_header(self, complete: bytes, base: int) -> list[RejectedLine]:
        rejected = []
        start = 0
        for line in complete.split(b"\n")[:-1]:
            rejected.append(
                RejectedLine(
                    base + start, len(line), "no_header", "CSV file without a header line", line[:RAW_KEEP]
                )
            )
            start += len(line) + 1
        self.counters["no_header"] += len(rejected)
        return rejected

    def _close_files(self) -> None:
        for f in self._files.values():
            with contextlib.suppress(OSError):
                os.close(f.fd)
        self._files.clear()


def _names(listing: list[Candidate]) -> set[tuple[str, int, int]]:
    return {(c.path, c.dev, c.ino) for c in listing}


def _new_key(dev: int, ino: int) -> str:
    return f"{dev:x}:{ino:x}:{secrets.token_hex(4)}"


def _same_prefix(fd_a: int, fd_b: int, length: int) -> bool:
    offset = 0
    while offset < length:
        n = min(1 << 20, length - offset)
        a = pread_exact(fd_a, n, offset)
        if a != pread_exact(fd_b, n, offset) or len(a) < n:
            return False
        offset += n
    return True


def _mark_to(mark: ContentMark) -> dict[str, Any]:
    return {
        "offset": mark.offset,
        "head_len": mark.head_len,
        "head": mark.head_sha,
        "marker_len": mark.marker_len,
        "marker": mark.marker_sha,
    }


def _mark_from(entry: dict[str, Any]) -> ContentMark:
    return ContentMark(
        int(entry["offset"]),
        int(entry["head_len"]),
        str(entry["head"]),
        int(entry["marker_len"]),
        str(entry["marker"]),
    )


def _header_to(header: bytes | None) -> str | None:
    return None if header is None else header.decode("latin-1")


def _header_from(value: object) -> bytes | None:
    return None if value is None else str(value).encode("latin-1")
