r"""Follow one stream's log files and hand out complete lines, each exactly once.

`StreamFollower.read` returns `LineBlock`s: runs of complete lines (each ending
in ``\n``) with the file and byte offset they came from. `StreamFollower.state`
describes the position of everything returned so far as JSON; the daemon commits
it in the same SQLite transaction as the outbox rows derived from those lines,
and after a restart `StreamFollower.restore` resumes exactly there.

The follower ties together the stream's parts, each in a module of its own:
which files belong and in what order (`agent.ingest.discovery`), how content is
recognised (`agent.ingest.identity`), truncation and copies (`agent.ingest.rotation`),
the saved position (`agent.ingest.checkpoint`) and reading lines (`agent.ingest.reader`).

Guarantees, for files the stream can see:

* **Partial lines** are never returned and never checkpointed past: the position
  stays before an unterminated last line until its newline arrives, also across
  a restart.
* **Rotation by rename** keeps the old file open (by inode) and drains it to its
  end before its successor is read (order rule in `agent.ingest.discovery`). A file
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

* **Open files bounded**: at most ``max_open_files`` descriptors; files read to their end
  are parked (closed, see `agent.ingest.parking`) and waiting files opened oldest first.
  Saved files re-found in their own inode after a restart are resumed before the bound
  defers any file: what they consumed is what a copy of them is recognised by.
* **Refused paths** (a FIFO or device node in a log file's place, an unreadable file) are
  never opened blocking; counted, logged once and reported (`agent.ingest.refusals`).

What cannot be saved: bytes of a file deleted while the agent was stopped, or
destroyed by truncation before they were read. Such losses are counted
(``lost_bytes``) where they can be seen.

Threads: `read`, `state`, `restore` and `close` are for one thread (the daemon's);
the watcher threads only set flags.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agent.config import IngestConfig
from agent.contract.streams import StreamConfig
from agent.errors import IngestError, WatchError
from agent.filewatch.watcher import FileWatcher, Signature
from agent.ingest import discovery
from agent.ingest.checkpoint import SavedPositions, read_checkpoint, write_checkpoint
from agent.ingest.copies import Ghost
from agent.ingest.discovery import Candidate, order_key
from agent.ingest.parking import ParkedFiles, unchanged
from agent.ingest.reader import LineBlock, LineReader
from agent.ingest.refusals import Refusals
from agent.ingest.rotation import RotationTracker
from agent.ingest.tracked import TrackedFile, open_checked

log = structlog.get_logger("robotpm.agent")


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
        self._release_after = ingest.release_after_s
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
            "files_parked": 0,
            "files_unparked": 0,
            "vanished_before_open": 0,
        }
        """Monotonic counts, for status and metrics."""
        self._files: dict[tuple[int, int], TrackedFile] = {}
        self._rotation = RotationTracker(self._files, self._csv, self._release_after, self.counters)
        self._saved = SavedPositions(self._files, self._csv, self.counters)
        self._reader = LineReader(stream, ingest, self.counters)
        self._parked = ParkedFiles(self.counters)
        self._rotation.wake_parked = self._wake_parked
        self._rotation.stream_header = lambda: self._reader.last_header
        self._refusals = Refusals(stream.name, self.counters)
        self._max_open = ingest.max_open_files
        self._waiting: list[Candidate] = []
        """Files listed but not opened yet, oldest first: the open-file bound was reached."""
        self._last_scan = float("-inf")
        self._scan_due = True
        self._watcher: FileWatcher | None = None
        self._closed = False

    # ------------------------------------------------------------------ public API

    def restore(self, state: dict[str, Any] | None) -> None:
        """Resume from a `state()` saved earlier; None starts afresh.

        A damaged or foreign state is discarded (counted as ``state_discarded``) and every
        file is read from its start: duplicates are possible then, loss is not.

        Files are matched on the next `read`, by inode and content; see the module docstring.
        """
        self._close_files()
        self._rotation.ghosts.clear()
        self._saved.entries.clear()
        self._parked.clear()
        self._waiting = []
        self._reader.last_header = None
        self._scan_due = True
        if not state:
            return
        checkpoint = read_checkpoint(state, self._clock())
        if checkpoint is None:
            # a damaged checkpoint must not stop the agent: start afresh (duplicates, never loss)
            self.counters["state_discarded"] += 1
            return
        self._saved.entries.update(checkpoint.files)
        self._rotation.ghosts.extend(checkpoint.ghosts)
        self._reader.last_header = checkpoint.last_header

    def start(self) -> None:
        """Start watching: inotify (unless ``watch = "poll"``) plus the safety-net stat poll."""
        if self._watcher is not None:
            return
        watcher = FileWatcher(
            Path(self._directory),
            self._ingest.watch,
            self._ingest.poll_interval_s,
            self._ingest.coalesce_ms / 1000.0,
            self._wakeup,
            self._signature,
            name=self._stream.name,
        )
        try:
            watcher.start()
        except WatchError as exc:
            watcher.stop()
            raise IngestError(f"stream {self._stream.name}: {exc}") from exc
        self._watcher = watcher

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
        if n_bytes is None or len(files) != 1 or self._rotation.ghosts:
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
        self._rotation.resolve_pending(now)  # a file that just got its first bytes can be a copy's source
        if scan or self._scan_due:  # a truncation just seen: copytruncate's copy is already there
            self._scan(now)
            # The scan stat'ed the files it found just now. Look at the files open before it
            # again: a rotation in between (last lines, rename, new file's lines) would otherwise
            # have the old file read to a size older than its successor's, and its last lines late.
            self._check_open_files(now, verify_all=False)
            if self._scan_due:
                self._scan(now)
        self._rotation.resolve_pending(now)
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
            budget -= self._reader.read_file(f, budget, out)
        if self._reader.changed_under_us:
            self._reader.changed_under_us = False
            self._wakeup.set()
        if self._waiting and any(_drained(f) for f in self._files.values()):
            self._open_waiting(now)  # room can be made: park what was read, open what waits
            self._wakeup.set()
        return out

    def state(self) -> dict[str, Any]:
        """A JSON-serialisable description of the position of everything `read` returned so far."""
        # saved entries not matched yet (restore() then state() before any read) stay as they were
        return write_checkpoint(
            self._files.values(),
            [*self._saved.entries.values(), *self._parked.entries.values()],
            self._rotation.ghosts,
            self._reader.last_header,
        )

    def close(self) -> None:
        """Stop watching, join the threads, close the files. Idempotent."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self._close_files()
        self._closed = True

    def refused(self) -> str | None:
        """Why some of the stream's files are not followed (see `agent.ingest.refusals`); None: all are."""
        return self._refusals.describe()

    def open_identities(self) -> set[tuple[int, int]]:
        """(device, inode) of every file held open: these can still be drained if deleted."""
        return set(self._files)

    def stats(self) -> dict[str, int]:
        """Counters plus open files, ghosts, and the watcher's file events and wakeups."""
        watcher = self._watcher
        return {
            **self.counters,
            "open_files": len(self._files),
            "parked_files": len(self._parked.entries),
            "files_deferred": len(self._waiting),
            "files_refused": len(self._refusals.standing),
            "ghosts": len(self._rotation.ghosts),
            "file_events": watcher.events if watcher is not None else 0,
            "wakeups": watcher.wakeups if watcher is not None else 0,
            "wakeups_gated": watcher.gated if watcher is not None else 0,
        }

    # ------------------------------------------------------------------ discovery

    def _signature(self) -> Signature:
        return discovery.signature(self._directory, self._patterns)

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
        refused: dict[str, str] = {}
        candidates, repeated = discovery.stable_listing(self._directory, self._patterns, refused)
        self.counters["listings_repeated"] += repeated
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
            if ident in self._parked.entries:
                changed = self._parked.sort_out(c, now, self._reader.last_header)
                if changed is None:
                    continue
                if isinstance(changed, Ghost):
                    # its content is gone, as for an open file: a copy of it is claimed from the
                    # ghost, known before any file of this listing is classified; it reads as new
                    self._rotation.add_ghost(changed)
                else:
                    self._saved.entries[ident] = changed  # appended to: resumes at its offset
            elif unchanged(self._saved.entries.get(ident, {}), c):
                self._parked.restore(c, self._saved.entries.pop(ident))  # parked before a restart
                continue
            new.append(c)
        for ident, f in self._files.items():
            if ident not in seen and not f.gone:
                f.gone = True
                f.last_change = now
        for ghost in self._parked.forget_unlisted(seen, now):
            self._rotation.add_ghost(ghost)
        new = self._within_bound(self._reopen_saved(new, now))
        if self._saved.entries:
            new = self._saved.match(new, now, self._reader.last_header)
        self._saved.place_rest(now, self._rotation.add_ghost, seen, self._reader.last_header)
        # live names first: a copy is recognised by the file it was copied from (reading order is
        # decided later, by order_key)
        new.sort(key=lambda c: (c.rank, order_key(c.mtime_ns, c.rank, c.path)))
        with self._rotation.one_listing():
            for c in new:
                self._add_new(c, now, refused)
        self._refusals.update(refused)
        if self._watcher is not None:
            self._watcher.watch_extra(discovery.symlink_dirs(self._directory, candidates))

    def _within_bound(self, new: list[Candidate]) -> list[Candidate]:
        """The new files to open now, oldest first, within ``max_open_files``; the rest wait.

        Room is made first by parking files read to their end (longest unchanged first). The saved
        files themselves are open by then (`_reopen_saved`); they count against the bound.
        """
        room = self._max_open - len(self._files)
        if len(new) > room:
            drained = sorted(
                ((ident, f) for ident, f in self._files.items() if _drained(f)),
                key=lambda item: item[1].last_change,
            )
            for ident, f in drained[: len(new) - room]:
                del self._files[ident]
                self._parked.park(f)
            room = self._max_open - len(self._files)
        new.sort(key=lambda c: order_key(c.mtime_ns, c.rank, c.path))
        opening = max(0, room)
        if len(new) > opening and not self._waiting:
            log.warning(
                "open_files_bound_reached",
                stream=self._stream.name,
                max_open_files=self._max_open,
                files_waiting=len(new) - opening,
            )
        elif self._waiting and len(new) <= opening:
            log.info("open_files_backlog_opened", stream=self._stream.name)
        self._waiting = new[opening:]
        return new[:opening]

    def _reopen_saved(self, new: list[Candidate], now: float) -> list[Candidate]:
        """Resume the listed files that are saved files themselves (same inode, content verified).

        Before the bound defers any file, as an open file is never deferred: a saved position
        left for a file that waits becomes a ghost without its head (`SavedPositions.place_rest`),
        and a copy of that file still shorter than it, with no open or parked source, would be
        taken for new content. Returns the other files. (Positions found by content in another
        file, renamed or copied, are matched among the files opened within the bound.)
        """
        own = [c for c in new if (c.dev, c.ino) in self._saved.entries]
        if not own:
            return new
        resumed = {c.path for c in own} - {
            c.path for c in self._saved.match(own, now, self._reader.last_header)
        }
        return [c for c in new if c.path not in resumed]

    def _open_waiting(self, now: float) -> None:
        """Open what waits for room, as far as the bound allows, without listing the directory again."""
        batch = self._within_bound(self._reopen_saved(self._waiting, now))
        if self._saved.entries:
            batch = self._saved.match(batch, now, self._reader.last_header)
        refused: dict[str, str] = dict(self._refusals.standing)
        with self._rotation.one_listing():
            for c in sorted(batch, key=lambda c: (c.rank, order_key(c.mtime_ns, c.rank, c.path))):
                self._add_new(c, now, refused)
        self._refusals.update(refused)

    def _add_new(self, c: Candidate, now: float, refused: dict[str, str]) -> None:
        # by identity: a file renamed since the listing would otherwise be found only after its
        # successor's lines are read
        failure: list[str] = []

        def opener(path: str) -> tuple[int, os.stat_result] | None:
            opened = open_checked(path)
            if isinstance(opened, str):
                failure.append(opened)
                return None
            return opened

        opened = discovery.open_listed(self._directory, self._patterns, c, opener)
        if opened is None:
            if failure:
                self._refusals.note_open_failure(refused, c.path, failure[-1])
            return
        fd, st, c = opened
        ident = (st.st_dev, st.st_ino)
        if ident in self._files:
            os.close(fd)
            return
        f = TrackedFile(fd, st.st_dev, st.st_ino, c.path, c.rank, self._csv, now)
        f.last_size, f.last_mtime = st.st_size, st.st_mtime_ns
        self._files[ident] = f
        self.counters["files_opened"] += 1
        self._rotation.classify(f, st.st_size, now)

    # ------------------------------------------------------------------ change detection

    def _check_open_files(self, now: float, verify_all: bool) -> None:
        for ghost in self._rotation.check_open_files(now, verify_all):
            if ghost.header is not None:
                self._reader.last_header = ghost.header
            self._scan_due = True  # the copy of copytruncate may already be there
        if self._rotation.unread_replaced:
            self._rotation.unread_replaced = False
            self._scan_due = True

    def _wake_parked(
        self, f: TrackedFile, head_at: int, head: bytes, now: float
    ) -> TrackedFile | Ghost | None:
        """A parked file new file `f` may be a copy of, reopened at its position (or its ghost)."""
        ident = self._parked.source_for(head_at, head, f.rank)
        if ident is None:
            return None
        woken = self._parked.wake(ident, now)
        if isinstance(woken, Ghost):
            self._scan_due = True  # its new content is listed and read as a new file's
            return woken
        source = self._saved.reopen(woken, now)
        if source is None:  # changed since it was verified: the next scan sorts it out
            self._saved.entries[ident] = woken
            self._scan_due = True
        return source

    def _expire(self, now: float, out: list[LineBlock]) -> None:
        """Drop old ghosts; settle quiet rotated files; close drained files that left the directory."""
        self._rotation.expire(now)
        for ident, f in list(self._files.items()):
            if now - f.last_change < self._release_after or not (f.gone or f.rank > 0):
                continue
            if f.pending is not None:
                if f.gone and f.pending.kind == "empty":
                    self._release(ident, f)  # left the directory holding nothing (or only NULs)
                continue
            if not self._reader.settle(f, out):
                continue
            if f.gone and f.offset >= f.last_size:
                self._release(ident, f)
            elif _drained(f):  # a rotated file read to its end: no descriptor kept
                del self._files[ident]
                self._parked.park(f)

    def _release(self, ident: tuple[int, int], f: TrackedFile) -> None:
        os.close(f.fd)
        del self._files[ident]
        self.counters["files_released"] += 1

    def _close_files(self) -> None:
        for f in self._files.values():
            with contextlib.suppress(OSError):
                os.close(f.fd)
        self._files.clear()


def _drained(f: TrackedFile) -> bool:
    """Whether an open file holds nothing more to read as last stat'ed (it can be parked).

    Read to its end, or pending while it is empty (or only NULs): held open, empty files
    could take every descriptor of the bound and the live file wait behind them for ever.
    Parked, such a file that gets bytes is listed as changed and judged as a new file (its
    position identifies nothing, see `agent.ingest.parking`).

    Not one that left the directory: a writer may still add to it, and only the open
    descriptor can reach it (it is released after ``release_after_s`` unchanged).
    """
    if f.gone:
        return False
    if f.pending is not None:
        return f.pending.kind == "empty"
    return not f.skipping and f.offset >= f.last_size
