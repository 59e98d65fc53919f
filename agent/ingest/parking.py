"""Files read to their end and closed, remembered without a descriptor: the open-file bound.

A stream holds at most ``ingest.max_open_files`` files open. A file read to its end
can be *parked*: its descriptor is closed and its saved position (the checkpoint
entry, see `agent.ingest.checkpoint.file_entry`) is kept with the size and
modification time it had. A rotated file (``name.N``, dated) is parked once read to
its end and unchanged for ``release_after_s``; any file read to its end is parked
when files wait to be opened.

A parked file that is listed again unchanged (same inode, size and mtime) is left
closed: nothing of it is read twice and no descriptor is spent. One that changed is
handed back as a saved position, so it is re-found by inode and verified by
content exactly as after a restart (appended: read on from its offset; rewritten:
read from 0, its old content kept as a ghost for a copy to claim). One that left
the directory is forgotten: it was read to its end.

A parked file's growth is found by a scan of the directory (each ``rescan_interval_s``, or
when the watcher sees the directory change), not by its descriptor: its new lines may wait
that long.

Parked files are part of the checkpoint (``"parked": true``), so a restart leaves
them closed too.
"""

from __future__ import annotations

import os
from typing import Any

from agent.ingest.checkpoint import Identity, file_entry
from agent.ingest.discovery import Candidate
from agent.ingest.tracked import TrackedFile


class ParkedFiles:
    """The stream's parked files, by (device, inode)."""

    def __init__(self, counters: dict[str, int]) -> None:
        self._counters = counters
        self.entries: dict[Identity, dict[str, Any]] = {}

    def park(self, f: TrackedFile) -> None:
        """Close `f` (read to its end) and remember its position."""
        entry = file_entry(f)
        entry.update(parked=True, size=f.last_size, mtime_ns=f.last_mtime)
        os.close(f.fd)
        self.entries[(f.dev, f.ino)] = entry
        self._counters["files_parked"] += 1

    def sort_out(self, c: Candidate) -> dict[str, Any] | None:
        """A listed parked file: None if unchanged (it stays parked), else its saved position.

        A changed one is no longer parked: it is opened and verified like a restored file.
        """
        ident = (c.dev, c.ino)
        entry = self.entries[ident]
        entry["path"], entry["rank"] = c.path, c.rank
        if unchanged(entry, c):
            return None
        del self.entries[ident]
        self._counters["files_unparked"] += 1
        return entry

    def forget_unlisted(self, listed: set[Identity]) -> None:
        """Forget the parked files that left the directory (they were read to their end)."""
        for ident in [i for i in self.entries if i not in listed]:
            del self.entries[ident]
            self._counters["files_released"] += 1


def unchanged(entry: dict[str, Any], c: Candidate) -> bool:
    """Whether a listed file still has the size and mtime its parked entry was saved with."""
    return bool(entry.get("parked")) and entry.get("size") == c.size and entry.get("mtime_ns") == c.mtime_ns
