"""The follower's saved position as JSON, and how a restart gives it back to the right files.

`write_checkpoint` describes every open file (inode, content mark, header, flags),
the ghosts and the last CSV header. After a restart `read_checkpoint` reads it
back, and `SavedPositions` gives each saved position to the file that holds its
content: re-found by inode and verified by content, else by content alone
(rotated or copied while the agent was stopped). A saved inode whose content
changed (copytruncate, truncation, inode reuse) is read from 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from agent.ingest.copies import Ghost
from agent.ingest.discovery import Candidate
from agent.ingest.identity import ContentMark, meaningful_head
from agent.ingest.tracked import TrackedFile, open_file

STATE_VERSION = 1

Identity = tuple[int, int]
"""(device, inode)."""


@dataclass(slots=True)
class Checkpoint:
    """A saved state, read back."""

    files: dict[Identity, dict[str, Any]]
    ghosts: list[Ghost]
    last_header: bytes | None


def read_checkpoint(state: object, now: float) -> Checkpoint | None:
    """The checkpoint in `state`, or None when it is damaged or of another version."""
    if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
        return None
    try:
        files = {(int(entry["dev"]), int(entry["ino"])): dict(entry) for entry in state.get("files", [])}
        ghosts = [
            Ghost(
                ContentMark.from_json(entry),
                header_from(entry.get("header")),
                now,
                int(entry.get("data_start", 0)),
                header_from(entry.get("head_bytes")),
            )
            for entry in state.get("ghosts", [])
        ]
        return Checkpoint(files, ghosts, header_from(state.get("last_header")))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def write_checkpoint(
    files: Iterable[TrackedFile],
    unmatched: Iterable[dict[str, Any]],
    ghosts: Iterable[Ghost],
    last_header: bytes | None,
) -> dict[str, Any]:
    """A JSON-serialisable state: the open files, saved entries not matched yet, the ghosts.

    Parked files (see `agent.ingest.parking`) are among the saved entries.
    """
    entries = [file_entry(f) for f in files if f.pending is None]
    entries.extend(unmatched)
    return {
        "v": STATE_VERSION,
        "files": entries,
        "ghosts": [
            {
                **g.mark.to_json(),
                "header": header_to(g.header),
                "data_start": g.data_start,
                "head_bytes": header_to(g.head),
            }
            for g in ghosts
        ],
        "last_header": header_to(last_header),
    }


def file_entry(f: TrackedFile) -> dict[str, Any]:
    """The saved position of one open file (also what a parked file is remembered by)."""
    entry = f.mark().to_json()
    entry.update(
        key=f.key,
        dev=f.dev,
        ino=f.ino,
        path=f.path,
        rank=f.rank,
        header=header_to(f.header),
        header_pending=f.header_pending,
        skipping=f.skipping,
        data_start=f.data_start,
        gone=f.gone,
    )
    return entry


class SavedPositions:
    """Saved positions after a restore, waiting for the files that hold their content."""

    def __init__(
        self, files: MutableMapping[Identity, TrackedFile], csv: bool, counters: dict[str, int]
    ) -> None:
        self._files = files
        self._csv = csv
        self._counters = counters
        self.entries: dict[Identity, dict[str, Any]] = {}

    def match(
        self, candidates: list[Candidate], now: float, last_header: bytes | None = None
    ) -> list[Candidate]:
        """Give saved positions to the listed files that hold their content; returns the others.

        The longest verified match wins (a saved file renamed, or copied by copytruncate,
        is found by content); the same inode breaks ties. A position covering nothing past a
        CSV header, or only NULs, identifies nothing: the file is read as new (from 0, which
        returns no line twice), so that a copy of it, or a reused inode, is recognised as such.
        """
        scored: list[tuple[tuple[int, bool], int, Candidate, Identity]] = []
        for c in candidates:  # one file open at a time: a directory of many files cannot exhaust fds
            handle = open_file(c.path)
            if handle is None:
                continue
            fd, st = handle
            try:
                for ident, saved in self.entries.items():
                    mark = ContentMark.from_json(saved)
                    if identifies(mark, saved, last_header) and mark.matches(fd, st.st_size):
                        same = (st.st_dev, st.st_ino) == ident
                        scored.append(((mark.offset, same), len(scored), c, ident))
            finally:
                os.close(fd)
        scored.sort(key=lambda item: (item[0], -item[1]), reverse=True)
        taken: set[str] = set()
        for _, _, c, ident in scored:
            if c.path in taken or ident not in self.entries:
                continue
            reopened = open_file(c.path)
            if reopened is None:
                continue
            fd, st = reopened
            mark = ContentMark.from_json(self.entries[ident])
            if (st.st_dev, st.st_ino) != (c.dev, c.ino) or not mark.matches(fd, st.st_size):
                os.close(fd)  # replaced or rewritten since it was scored: the next scan looks again
                continue
            self._adopt_open(self.entries.pop(ident), fd, st, c.path, c.rank, now)
            taken.add(c.path)
        return [c for c in candidates if c.path not in taken]

    def place_rest(
        self,
        now: float,
        add_ghost: Callable[[Ghost], None],
        listed: set[Identity],
        last_header: bytes | None = None,
    ) -> None:
        """Place the saved files `match` found no file for.

        One that is not in the directory (`listed`) is adopted where it was (e.g. an old
        symlink target, still to be drained). Otherwise the identity of its content is kept
        as a ghost for a copy to claim.
        """
        for ident, saved in list(self.entries.items()):
            del self.entries[ident]
            if ident not in listed and self._adopt_by_path(saved, ident, now):
                continue
            mark = ContentMark.from_json(saved)
            if identifies(mark, saved, last_header):
                add_ghost(Ghost(mark, header_from(saved.get("header")), now, int(saved.get("data_start", 0))))

    def reopen(self, saved: dict[str, Any], now: float) -> TrackedFile | None:
        """Open the file of `saved` where it is and resume at its position, if it still holds it."""
        ident = (int(saved["dev"]), int(saved["ino"]))
        path = str(saved.get("path", ""))
        if not path or not self._adopt(saved, path, int(saved.get("rank", 0)), now):
            return None
        return self._files[ident]

    def _adopt_by_path(self, saved: dict[str, Any], ident: Identity, now: float) -> bool:
        path = str(saved.get("path", ""))
        if not path or ident in self._files:
            return False
        adopted = self._adopt(saved, path, int(saved.get("rank", 0)), now)
        if adopted:
            self._files[ident].gone = True
        return adopted

    def _adopt(self, saved: dict[str, Any], path: str, rank: int, now: float) -> bool:
        """Resume a saved file at its saved offset if it is still the same inode and content."""
        opened = open_file(path)
        if opened is None:
            return False
        fd, st = opened
        if (st.st_dev, st.st_ino) != (int(saved["dev"]), int(saved["ino"])) or (st.st_dev, st.st_ino) in (
            self._files
        ):
            os.close(fd)
            return False
        if not ContentMark.from_json(saved).matches(fd, st.st_size):
            os.close(fd)
            return False
        self._adopt_open(saved, fd, st, path, rank, now)
        return True

    def _adopt_open(
        self, saved: dict[str, Any], fd: int, st: os.stat_result, path: str, rank: int, now: float
    ) -> None:
        mark = ContentMark.from_json(saved)
        f = TrackedFile(fd, st.st_dev, st.st_ino, path, rank, self._csv, now)
        if (st.st_dev, st.st_ino) == (int(saved["dev"]), int(saved["ino"])):
            f.key = str(saved.get("key") or f.key)
        else:
            self._counters["copies_claimed"] += 1
        f.resume_at(mark)
        found = meaningful_head(fd, st.st_size)
        f.seen_at = found[0] if found is not None else None
        f.header = header_from(saved.get("header"))
        f.header_pending = bool(saved.get("header_pending", False)) and self._csv
        f.skipping = bool(saved.get("skipping", False))
        f.data_start = int(saved.get("data_start", 0))
        f.last_size, f.last_mtime = st.st_size, st.st_mtime_ns
        self._files[(st.st_dev, st.st_ino)] = f
        self._counters["files_opened"] += 1


def identifies(mark: ContentMark, saved: dict[str, Any], last_header: bytes | None = None) -> bool:
    """Whether a saved position covers meaningful content past the CSV header.

    One that does not cannot tell its file from another starting alike (a reused inode, a copy):
    such a file is read from 0, which returns no line twice. That includes a position saved
    without its header (a file skipped as a copy before its header was read: ``data_start`` 0)
    whose consumed bytes are exactly the stream's CSV header line, `last_header`.
    """
    if not mark.identifies_content or mark.offset <= int(saved.get("data_start", 0)):
        return False
    header = header_from(saved.get("header")) or last_header
    return header is None or not mark.is_only_line(header)


def header_to(header: bytes | None) -> str | None:
    """A CSV header (or other short bytes) as JSON text: latin-1 keeps every byte."""
    return None if header is None else header.decode("latin-1")


def header_from(value: object) -> bytes | None:
    """A CSV header saved by `header_to`."""
    return None if value is None else str(value).encode("latin-1")
