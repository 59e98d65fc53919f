"""Files read to their end and closed, remembered without a descriptor: the open-file bound.

A stream holds at most ``ingest.max_open_files`` files open. A file read to its end
can be *parked*: its descriptor is closed and its saved position (the checkpoint
entry, see `agent.ingest.checkpoint.file_entry`) is kept with the size and
modification time it had. A rotated file (``name.N``, dated) is parked once read to
its end and unchanged for ``release_after_s``; any file read to its end is parked
when files wait to be opened.

A parked file that is listed again unchanged (same inode, size and mtime) is left
closed: nothing of it is read twice and no descriptor is spent. One that changed is
judged as if it had stayed open, by its own inode, at once:

* still holding what was consumed (appended to): handed back as a saved position, so
  it reads on from its offset (re-found and verified exactly as after a restart);
* anything else (truncated, copytruncated, rewritten, NUL-filled by a writer without
  O_APPEND, its inode reused by a new file): what it held becomes a *ghost*, known
  before any new file of the same listing is classified, so that copytruncate's copy
  (in this listing or a later one) claims it; the file itself is read as a new one.
  Its content is never matched by content against the other files of the listing: a
  shorter position (a CSV header only) could otherwise take a copy that the ghost of
  a longer one owns, and return its lines twice;
* a position covering nothing past the CSV header cannot tell an append from a new
  file in its reused inode (logrotate deleting the oldest rotation, then copying): the
  file is read from 0, which returns no line twice.

One that left the directory is forgotten (it was read to its end), leaving the ghost of what
was consumed, for a copy of it made before it went to claim.

A parked file can also be the source of a copy before it changes (logrotate copies, then
truncates): a new file whose meaningful head is that of a parked file (see
`ParkedFiles.source_for`) wakes it, so that it is reopened at its position and the copy
is judged against it as against any open file (`agent.ingest.rotation`). This costs a
descriptor only while such a copy is being decided.

A parked file's growth is found by a scan of the directory (each ``rescan_interval_s``, or
when the watcher sees the directory change), not by its descriptor: its new lines may wait
that long.

Parked files are part of the checkpoint (``"parked": true``), so a restart leaves
them closed too.
"""

from __future__ import annotations

import os
from typing import Any

from agent.ingest.checkpoint import Identity, file_entry, header_from, identifies
from agent.ingest.copies import Ghost
from agent.ingest.discovery import Candidate
from agent.ingest.identity import ContentMark, pread_exact
from agent.ingest.tracked import TrackedFile, open_file


class ParkedFiles:
    """The stream's parked files, by (device, inode)."""

    def __init__(self, counters: dict[str, int]) -> None:
        self._counters = counters
        self.entries: dict[Identity, dict[str, Any]] = {}
        self._heads: dict[Identity, bytes] = {}
        """The consumed head of each parked file (not saved: read back from a file parked again
        after a restart, see `restore`; a ghost made of its entry recognises a copy still
        shorter than it only while the head is known)."""

    def clear(self) -> None:
        """Forget every parked file (a restore brings its own)."""
        self.entries.clear()
        self._heads.clear()

    def park(self, f: TrackedFile) -> None:
        """Close `f` (read to its end) and remember its position."""
        entry = file_entry(f)
        entry.update(parked=True, size=f.last_size, mtime_ns=f.last_mtime)
        os.close(f.fd)
        self.entries[(f.dev, f.ino)] = entry
        if f.head:
            self._heads[(f.dev, f.ino)] = f.head
        self._counters["files_parked"] += 1

    def restore(self, c: Candidate, entry: dict[str, Any]) -> None:
        """Park listed file `c` again, saved parked before a restart and found unchanged.

        Its consumed head (not saved) is read back from it, so that a copy of it still shorter
        than that head is recognised as one (`source_for`), as before the restart.
        """
        ident = (c.dev, c.ino)
        self.entries[ident] = entry
        opened = open_file(c.path)
        if opened is None:
            return
        fd, st = opened
        try:
            mark = ContentMark.from_json(entry)
            if (st.st_dev, st.st_ino) == ident and mark.identifies_content and mark.head_matches(fd):
                self._heads[ident] = pread_exact(fd, mark.head_len, mark.head_at)
        finally:
            os.close(fd)

    def sort_out(self, c: Candidate, now: float, last_header: bytes | None) -> dict[str, Any] | Ghost | None:
        """A listed parked file: None if unchanged (it stays parked), else it is no longer parked.

        Its saved position if it still holds what was consumed (appended to; it is opened
        and resumed like a restored file), else the ghost of what it held (counted as a
        truncation, as for an open file); see the module docstring. `last_header`: the stream's
        CSV header, for a file saved without its own.
        """
        ident = (c.dev, c.ino)
        entry = self.entries[ident]
        entry["path"], entry["rank"] = c.path, c.rank
        if unchanged(entry, c):
            return None
        del self.entries[ident]
        head = self._heads.pop(ident, None)
        self._counters["files_unparked"] += 1
        mark = ContentMark.from_json(entry)
        ghost = Ghost(mark, header_from(entry.get("header")), now, int(entry.get("data_start", 0)), head)
        if not identifies(mark, entry) or _only_header(entry, head, last_header):
            return ghost  # nothing past the header: read from 0 (its inode may hold another file now)
        if _still_holds(entry, c):
            return entry
        self._counters["truncations"] += 1
        return ghost

    def source_for(self, head_at: int, head: bytes, rank: int) -> Identity | None:
        """The parked file a new file of `rank` starting with `head` at `head_at` may be a copy of.

        The one sharing the longest head with it, by the rules for open files: never one more
        rotated than it; sharing no more than the CSV header says nothing, unless all of the new
        file so far is a prefix of it. None: no such parked file.
        """
        best, best_n = None, 0
        for ident, known in self._heads.items():
            entry = self.entries[ident]
            if int(entry.get("rank", 0)) > rank or int(entry.get("head_at", 0)) != head_at:
                continue
            if not (known.startswith(head) or head.startswith(known)):
                continue
            n = min(len(head), len(known))
            if n > best_n and (n == len(head) or head_at + n > int(entry.get("data_start", 0))):
                best, best_n = ident, n
        return best

    def wake(self, ident: Identity, now: float) -> dict[str, Any] | Ghost:
        """Stop parking `ident`, a copy of it being made: its saved position to reopen it at.

        The ghost of its content instead if that is gone already (see `sort_out`).
        """
        entry = self.entries.pop(ident)
        head = self._heads.pop(ident, None)
        self._counters["files_unparked"] += 1
        path = str(entry.get("path", ""))
        opened = open_file(path) if path else None
        if opened is not None:
            fd, st = opened
            try:
                if (st.st_dev, st.st_ino) == ident and ContentMark.from_json(entry).matches(fd, st.st_size):
                    return entry
            finally:
                os.close(fd)
        self._counters["truncations"] += 1
        return Ghost(
            ContentMark.from_json(entry),
            header_from(entry.get("header")),
            now,
            int(entry.get("data_start", 0)),
            head,
        )

    def forget_unlisted(self, listed: set[Identity], now: float) -> list[Ghost]:
        """Forget the parked files that left the directory (they were read to their end).

        Returns the ghosts of what they held, as for an open file whose content vanished: a
        copy of one made before it went (copytruncate, then the file deleted) claims it, rather
        than being read as new.
        """
        ghosts: list[Ghost] = []
        for ident in [i for i in self.entries if i not in listed]:
            entry = self.entries.pop(ident)
            head = self._heads.pop(ident, None)
            self._counters["files_released"] += 1
            mark = ContentMark.from_json(entry)
            if identifies(mark, entry):
                ghosts.append(
                    Ghost(mark, header_from(entry.get("header")), now, int(entry.get("data_start", 0)), head)
                )
        return ghosts


def unchanged(entry: dict[str, Any], c: Candidate) -> bool:
    """Whether a listed file still has the size and mtime its parked entry was saved with."""
    return bool(entry.get("parked")) and entry.get("size") == c.size and entry.get("mtime_ns") == c.mtime_ns


def _only_header(entry: dict[str, Any], head: bytes | None, last_header: bytes | None) -> bool:
    """Whether all that was consumed of a parked file is its CSV header line.

    (A file skipped as a copy before its header was read is saved without header, ``data_start`` 0.)
    """
    header = header_from(entry.get("header")) or last_header
    if head is None or header is None or head.rstrip(b"\r\n") != header:
        return False
    return int(entry.get("offset", -1)) == int(entry.get("head_at", 0)) + len(head)


def _still_holds(entry: dict[str, Any], c: Candidate) -> bool:
    """Whether the listed file is still the parked inode and holds everything consumed from it.

    One that cannot be opened now (it vanished since the listing) is taken as holding it: its
    saved position is then placed like a restored one (adopted where it is, or kept as a ghost).
    """
    opened = open_file(c.path)
    if opened is None:
        return True
    fd, st = opened
    try:
        if (st.st_dev, st.st_ino) != (c.dev, c.ino):
            return True  # replaced since the listing: the saved position finds its file by content
        return ContentMark.from_json(entry).matches(fd, st.st_size)
    finally:
        os.close(fd)
