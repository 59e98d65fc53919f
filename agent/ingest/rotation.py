"""Rotation: truncation and copytruncate seen in open files, and copies recognised as known content.

When an open file's content changes under it (it shrank, or its head or offset marker
no longer match: truncation, copytruncate to any size, rewrite in place), the old
content's identity is kept as a *ghost* and the file is read again from 0. A new
file is classified by its meaningful head (the bytes after any leading NUL hole,
see `agent.ingest.identity`) before a byte of it is read (`RotationTracker.classify`):

* whose head and marker match a ghost: copytruncate's copy, it resumes at the
  ghost's offset (claimed);
* empty, or only NULs so far: nothing to tell yet, *pending* until bytes arrive
  (logrotate creates the copy empty, then fills it);
* whose head matches a ghost but which is shorter, or whose head matches the head
  of another file of the stream (a plain ``cp``, or the copy of a file that is not
  truncated yet), that other file not being more rotated: *pending*, looked at
  again whenever it grows. A copy of a file
  being read is compared with it as its bytes arrive, so a file that differs is
  read at once. A pending file that stays unchanged for ``release_after_s`` holds
  nothing new (a shorter copy of content consumed in full) and is skipped;
* anything else: new content, read from its start.

Each copy is thus either claimed, skipped, or read from 0: its lines are returned
once, whenever the follower happens to look at it (`RotationTracker.resolve_pending`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping

from agent.ingest.copies import Ghost, Pending
from agent.ingest.identity import HEAD_BYTES, digest, meaningful_head, same_bytes, same_ends
from agent.ingest.tracked import TrackedFile

GHOST_TTL_S = 60.0
"""How long the identity of truncated or vanished content waits for its copy to appear."""
MAX_GHOSTS = 64

FileTable = Mapping[tuple[int, int], TrackedFile]
"""The stream's open files by (device, inode)."""


class RotationTracker:
    """Keeps the ghosts of one stream and decides what a new or changed file holds."""

    def __init__(self, files: FileTable, csv: bool, release_after_s: float, counters: dict[str, int]) -> None:
        self._files = files
        self._csv = csv
        self._release_after = release_after_s
        self._counters = counters
        self.ghosts: list[Ghost] = []
        self.unread_replaced = False
        """Set by `check_open_files` when an unread file's content was replaced: list again."""
        self._heads: dict[str, tuple[int, bytes] | None] | None = None
        self.wake_parked: Callable[[TrackedFile, int, bytes, float], TrackedFile | Ghost | None] | None = None
        """Set by the follower: the parked file a new file with this head may be a copy of, reopened
        (or, its content gone already, its ghost); see `agent.ingest.parking`."""
        self.stream_header: Callable[[], bytes | None] = lambda: None
        """Set by the follower: the stream's CSV header as last read (for ghosts saved without one)."""

    def add_ghost(self, ghost: Ghost) -> None:
        """Remember vanished content (the oldest ghosts beyond `MAX_GHOSTS` are forgotten).

        Content that was only NULs identifies nothing: it is not kept.
        """
        if not ghost.mark.identifies_content:
            return
        self.ghosts.append(ghost)
        del self.ghosts[:-MAX_GHOSTS]

    def expire(self, now: float) -> None:
        """Forget ghosts older than `GHOST_TTL_S`."""
        self.ghosts = [g for g in self.ghosts if now - g.born < GHOST_TTL_S]

    def check_open_files(self, now: float, verify_all: bool) -> list[Ghost]:
        """Notice growth, truncation and replaced content (copytruncate) of the open files.

        The head and the offset marker are checked when a file changed, and for every file when
        `verify_all` (each rescan), which catches a same-size rewrite within one mtime tick.
        Returns the ghosts of the content found gone (those files now read from 0).
        """
        found: list[Ghost] = []
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
            if size < f.offset or not f.content_intact():
                found.append(self._restart(f, size, now))
            elif not f.head:
                self._check_unread_start(f, size)
        return found

    def _check_unread_start(self, f: TrackedFile, size: int) -> None:
        """Notice that a file nothing meaningful was read from yet starts elsewhere than it did.

        Its content was replaced (truncated, then written by a logger without O_APPEND at its
        old offset): nothing of it is lost, but the copy of what it held may already be in the
        directory, and must be listed (and read, being older) before the new content.
        """
        found = meaningful_head(f.fd, size)
        start = found[0] if found is not None else None
        if start == f.seen_at:
            return
        if f.seen_at is not None or (start is not None and start > 0):
            self.unread_replaced = True
        f.seen_at = start

    def _restart(self, f: TrackedFile, size: int, now: float) -> Ghost:
        ghost = Ghost(f.mark(), f.header, now, f.data_start, f.head)
        self.add_ghost(ghost)
        f.restart(self._csv)
        found = meaningful_head(f.fd, size)  # where its content starts now: a copy of it is recognised
        f.seen_at = found[0] if found is not None else None
        self._counters["truncations"] += 1
        return ghost

    def classify(self, f: TrackedFile, size: int, now: float) -> None:
        """Decide whether a new file is fresh content, or a copy of content already consumed."""
        f.pending = None
        found = meaningful_head(f.fd, size)
        if found is None:
            f.pending = Pending("empty", None, None, size, now)
            return
        head_at, head = found
        f.seen_at = head_at
        # the most specific identity first; one that covers no more than a CSV header says nothing
        for ghost in sorted(self.ghosts, key=lambda g: g.mark.offset, reverse=True):
            mark = ghost.mark
            if mark.offset <= ghost.data_start or mark.head_at != head_at or self._only_header(ghost):
                continue
            if len(head) < mark.head_len:  # shorter than the ghost's head: a copy being written?
                if ghost.head is not None and ghost.head.startswith(head):
                    f.pending = Pending("ghost", ghost, None, size, now)
                    return
                continue
            if digest(head[: mark.head_len]) != mark.head_sha:
                continue
            if size >= mark.offset:
                if mark.marker_matches(f.fd):
                    self._claim(f, ghost)
                    return
                continue
            f.pending = Pending("ghost", ghost, None, size, now)
            return
        source = self._copy_source(f, head_at, head)
        if source is None and self.wake_parked is not None:
            woken = self.wake_parked(f, head_at, head, now)
            if isinstance(woken, Ghost):
                self.add_ghost(woken)
                self.classify(f, size, now)  # it may be the copy that claims it
                return
            source = woken
        if source is not None:
            f.pending = Pending("copy", None, source.key, size, now)

    def _only_header(self, ghost: Ghost) -> bool:
        """Whether all a ghost's content was the CSV header line, though saved without it.

        (Content skipped as a copy before its source's header was read: ``data_start`` 0.) Such a
        ghost identifies nothing, as one whose offset is its ``data_start``: every file of the
        stream starts alike, a copy of another file among them (e.g. in its reused inode).
        """
        header = ghost.header or self.stream_header()
        return self._csv and header is not None and ghost.mark.is_only_line(header)

    def _copy_source(self, f: TrackedFile, head_at: int, head: bytes) -> TrackedFile | None:
        """The file `f` looks like a copy of: the one sharing the longest head with it."""
        best, best_n = None, 0
        for other in self._files.values():
            # a copy is made under a rotated name: a file is never taken for a copy of a more rotated one
            if other is f or other.pending is not None or other.rank > f.rank:
                continue
            theirs = self._source_head(other, len(head))
            if theirs is None or theirs[0] != head_at:
                continue
            known = theirs[1]  # may be longer than `head`: they agree on min(len) bytes or differ
            if not (known.startswith(head) or head.startswith(known)):
                continue
            n = min(len(head), len(known))
            # sharing no more than the header line says nothing (every file of the stream has it),
            # unless all of `f` so far is a prefix of the other (a copy being written, or cut short)
            telling = n == len(head) or head_at + n > other.data_start
            if n > best_n and telling:
                best, best_n = other, n
        return best

    @contextlib.contextmanager
    def one_listing(self) -> Iterator[None]:
        """Classify the new files of one scan: each open file's head is read once for all of them.

        A scan of many new files would otherwise read every open file's head once per new file.
        """
        self._heads = {}
        try:
            yield
        finally:
            self._heads = None

    def _source_head(self, other: TrackedFile, length: int) -> tuple[int, bytes] | None:
        """`other.source_head(length)`; within `one_listing`, possibly longer (read once per listing)."""
        if self._heads is None:
            return other.source_head(length)
        if other.key not in self._heads:
            self._heads[other.key] = other.source_head(HEAD_BYTES)
        return self._heads[other.key]

    def _claim(self, f: TrackedFile, ghost: Ghost) -> None:
        f.resume_at(ghost.mark)
        f.header = ghost.header
        f.header_pending = False
        f.data_start = ghost.data_start
        f.pending = None
        if ghost in self.ghosts:
            self.ghosts.remove(ghost)
        self._counters["copies_claimed"] += 1

    def resolve_pending(self, now: float) -> None:
        """Look again at pending files and decide those that can be decided now.

        A pending file is decided when it grew (what is it now?), reached its ghost's offset,
        differs from its source, or stayed unchanged for ``release_after_s``.
        """
        for f in list(self._files.values()):
            pending = f.pending
            if pending is None:
                continue
            try:
                st = os.fstat(f.fd)
            except OSError:
                continue
            size = st.st_size
            if size != f.last_size or st.st_mtime_ns != f.last_mtime:  # the change check skips it
                f.last_size, f.last_mtime, f.last_change = size, st.st_mtime_ns, now
            if pending.kind == "empty":
                if size != pending.size:
                    self.classify(f, size, now)  # bytes arrived: what are they?
            elif pending.kind == "ghost":
                self._resolve_ghost(f, pending, size, now)
            else:
                self._resolve_copy(f, pending, size, now)

    def _resolve_ghost(self, f: TrackedFile, pending: Pending, size: int, now: float) -> None:
        ghost = pending.ghost
        assert ghost is not None
        if ghost not in self.ghosts or size != pending.size or not _starts_as(f, ghost, size):
            self.classify(f, size, now)  # grown (it may now reach the offset), or rewritten
        elif now - pending.since >= self._release_after:
            # a shorter copy of content we consumed in full: nothing new in it
            f.pending = None
            f.skip_to(size, ghost.header, ghost.data_start)

    def _resolve_copy(self, f: TrackedFile, pending: Pending, size: int, now: float) -> None:
        source = next((o for o in self._files.values() if o.key == pending.source_key), None)
        if source is None:
            self.classify(f, size, now)
            return
        try:
            source_size = os.fstat(source.fd).st_size
        except OSError:
            return
        upto = min(size, source_size)
        if pending.verified > upto or not same_ends(f.fd, source.fd, pending.verified):
            pending.verified = 0  # rewritten since it was compared (e.g. truncated, then written to)
        if size > source_size or not same_bytes(f.fd, source.fd, pending.verified, upto):
            if source_size < source.offset or not source.content_intact():
                return  # the source changed under us (truncated): its change check comes first
            # bytes its source does not have: not a copy of it. Of another file (one sharing only
            # a header with it was taken while the copy held no more), or of a parked one?
            self.classify(f, size, now)
            again = f.pending
            if again is not None and again.kind == "copy" and again.source_key == pending.source_key:
                f.pending = None  # of nothing known: new content
            return
        pending.verified = upto
        if size != pending.size:
            pending.size, pending.since = size, now
        elif now - pending.since >= self._release_after:
            f.pending = None
            # a plain copy: its lines come from the source
            f.skip_to(size, source.header, source.data_start)
            self._counters["copies_skipped"] += 1


def _starts_as(f: TrackedFile, ghost: Ghost, size: int) -> bool:
    """Whether pending `f` still starts as the ghost's content did (a shorter copy of it).

    A file rewritten to the same size since it was classified (truncated, then written to)
    does not: it is classified again rather than skipped with its new lines.
    """
    found = meaningful_head(f.fd, size)
    if found is None or found[0] != ghost.mark.head_at:
        return False
    head, mark = found[1], ghost.mark
    if len(head) < mark.head_len:
        return ghost.head is not None and ghost.head.startswith(head)
    return digest(head[: mark.head_len]) == mark.head_sha
