"""Rotation: truncation and copytruncate seen in open files, and copies recognised as known content.

When an open file's content changes under it (it shrank, or the offset marker no
longer matches: truncation, copytruncate to any size, rewrite in place), the old
content's identity is kept as a *ghost* and the file is read again from 0. A new
file whose head and marker match a ghost is copytruncate's copy: it resumes at the
ghost's offset (`RotationTracker.classify`). A new file whose head matches a ghost
but is still shorter than the ghost's offset, or whose head matches a file still
being read (a plain ``cp``), is *pending*: not read until it either reaches the
offset or stays unchanged for ``release_after_s`` (`RotationTracker.resolve_pending`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from agent.ingest.identity import ContentMark, pread_exact, same_prefix
from agent.ingest.tracked import TrackedFile

GHOST_TTL_S = 60.0
"""How long the identity of truncated or vanished content waits for its copy to appear."""
MAX_GHOSTS = 64

FileTable = Mapping[tuple[int, int], TrackedFile]
"""The stream's open files by (device, inode)."""


@dataclass(slots=True)
class Ghost:
    """The identity of content that vanished from its inode, waiting for a copy to claim it."""

    mark: ContentMark
    header: bytes | None
    born: float
    data_start: int = 0
    """Where the data lines began (after the file's own header line, if it had one)."""


@dataclass(slots=True)
class Pending:
    """A new file that may be a copy of known content: not read until that is decided."""

    kind: str  # "ghost" | "copy"
    ghost: Ghost | None
    source_key: str | None
    size: int
    since: float


class RotationTracker:
    """Keeps the ghosts of one stream and decides what a new or changed file holds."""

    def __init__(self, files: FileTable, csv: bool, release_after_s: float, counters: dict[str, int]) -> None:
        self._files = files
        self._csv = csv
        self._release_after = release_after_s
        self._counters = counters
        self.ghosts: list[Ghost] = []

    def add_ghost(self, ghost: Ghost) -> None:
        """Remember vanished content (the oldest ghosts beyond `MAX_GHOSTS` are forgotten)."""
        self.ghosts.append(ghost)
        del self.ghosts[:-MAX_GHOSTS]

    def expire(self, now: float) -> None:
        """Forget ghosts older than `GHOST_TTL_S`."""
        self.ghosts = [g for g in self.ghosts if now - g.born < GHOST_TTL_S]

    def check_open_files(self, now: float, verify_all: bool) -> list[Ghost]:
        """Notice growth, truncation and replaced content (copytruncate) of the open files.

        The offset marker is checked when a file changed, and for every file when
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
            if size < f.offset or (
                f.marker and pread_exact(f.fd, len(f.marker), f.offset - len(f.marker)) != f.marker
            ):
                found.append(self._restart(f, now))
        return found

    def _restart(self, f: TrackedFile, now: float) -> Ghost:
        ghost = Ghost(f.mark(), f.header, now, f.data_start)
        self.add_ghost(ghost)
        f.restart(self._csv)
        self._counters["truncations"] += 1
        return ghost

    def classify(self, f: TrackedFile, size: int, now: float) -> None:
        """Decide whether a new file is fresh content, or a copy of content already consumed."""
        # the most specific identity first; one that covers no more than a CSV header says nothing
        for ghost in sorted(self.ghosts, key=lambda g: g.mark.offset, reverse=True):
            mark = ghost.mark
            if mark.offset <= ghost.data_start or size < mark.head_len or not mark.head_matches(f.fd):
                continue
            if size >= mark.offset:
                if mark.marker_matches(f.fd):
                    self._claim(f, ghost)
                    return
                continue
            f.pending = Pending("ghost", ghost, None, size, now)
            return
        for other in self._files.values():
            if other is f or other.pending is not None or not other.has_data_head():
                continue
            if size >= len(other.head) and pread_exact(f.fd, len(other.head), 0) == other.head:
                f.pending = Pending("copy", None, other.key, size, now)
                return

    def _claim(self, f: TrackedFile, ghost: Ghost) -> None:
        mark = ghost.mark
        f.offset = mark.offset
        f.head = pread_exact(f.fd, mark.head_len, 0)
        f.marker = pread_exact(f.fd, mark.marker_len, mark.offset - mark.marker_len)
        f.header = ghost.header
        f.header_pending = False
        f.data_start = ghost.data_start
        f.pending = None
        if ghost in self.ghosts:
            self.ghosts.remove(ghost)
        self._counters["copies_claimed"] += 1

    def resolve_pending(self, now: float) -> None:
        """Settle pending files that reached their ghost's offset or stayed unchanged long enough."""
        for f in list(self._files.values()):
            pending = f.pending
            if pending is None:
                continue
            try:
                size = os.fstat(f.fd).st_size
            except OSError:
                continue
            if pending.kind == "ghost":
                self._resolve_ghost(f, pending, size, now)
            else:
                self._resolve_copy(f, pending, size, now)

    def _resolve_ghost(self, f: TrackedFile, pending: Pending, size: int, now: float) -> None:
        ghost = pending.ghost
        assert ghost is not None
        if ghost not in self.ghosts:
            f.pending = None
            self.classify(f, size, now)
        elif size >= ghost.mark.offset:
            f.pending = None
            if ghost.mark.marker_matches(f.fd):
                self._claim(f, ghost)
        elif size != pending.size:
            pending.size, pending.since = size, now
        elif now - pending.since >= self._release_after:
            # a shorter copy of content we consumed in full: nothing new in it
            f.pending = None
            f.skip_to(size, ghost.header, ghost.data_start)

    def _resolve_copy(self, f: TrackedFile, pending: Pending, size: int, now: float) -> None:
        source = next((o for o in self._files.values() if o.key == pending.source_key), None)
        if source is None:
            f.pending = None
            self.classify(f, size, now)
        elif size != pending.size:
            pending.size, pending.since = size, now
        elif now - pending.since >= self._release_after:
            f.pending = None
            if same_prefix(f.fd, source.fd, size):
                # a plain copy: its lines come from the source
                f.skip_to(size, source.header, source.data_start)
                self._counters["copies_skipped"] += 1
