"""Which files belong to a stream, and in what order they are read.

A stream is a directory and glob patterns (``StreamConfig.patterns``). A file
belongs to the stream when its name matches a pattern, or when it matches once a
rotation suffix is taken off: ``arm1.csv.1`` (logrotate's numbered rotation) and
``arm1.csv-20261126`` (``dateext``) both belong to a stream whose pattern matches
``arm1.csv``. Compressed files (``.gz``, ``.xz`` …) never belong: their content
was already read as the plain rotated file, and they cannot be followed.

**Order rule (oldest content first).** Files are read in the order of
`order_key`: last modification time, oldest first; on a tie, the higher rotation
number first (``.2`` before ``.1`` before the un-suffixed current file), then by
name. A rotated file stops changing when it is rotated, while its successor is
written after that, so a rotated segment's unread bytes are always returned
before its successor's.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.filewatch.watcher import Signature
from agent.ingest.tracked import NOT_REGULAR, VANISHED, refusal_reason

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip", ".z", ".lzma", ".br", ".7z")
"""Rotated files with these suffixes are ignored."""

MAX_LISTINGS = 5
"""A scan lists the directory until two listings agree, at most this many times."""

Opener = Callable[[str], "tuple[int, os.stat_result] | None"]
"""Opens a path for reading: a descriptor and its stat, or None."""

_NUMBERED = re.compile(r"^(?P<base>.+)[.-](?P<n>\d{1,6})$")
_DATED = re.compile(r"^(?P<base>.+)[._-](?P<date>\d{8}(?:[-_T]?\d{2,6})?)$")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file of the stream seen in the directory."""

    path: str
    """The path as listed (may be a symlink)."""
    dev: int
    ino: int
    size: int
    mtime_ns: int
    rank: int
    """Rotation number: 0 for the current file, N for ``name.N``, 1 for a dated rotation."""


def rotation_rank(name: str, patterns: tuple[str, ...]) -> int | None:
    """The rotation rank of a file name for these patterns, or None if it is not the stream's.

    0 means the name matches a pattern itself; N means it matches once a
    ``.N`` suffix is removed; 1 for a date suffix. Compressed names give None.
    """
    lowered = name.lower()
    if lowered.endswith(COMPRESSED_SUFFIXES):
        return None
    if any(fnmatch.fnmatchcase(name, p) for p in patterns):
        return 0
    numbered = _NUMBERED.match(name)
    if numbered and any(fnmatch.fnmatchcase(numbered["base"], p) for p in patterns):
        return int(numbered["n"])
    dated = _DATED.match(name)
    if dated and any(fnmatch.fnmatchcase(dated["base"], p) for p in patterns):
        return 1
    return None


def list_candidates(
    directory: str, patterns: tuple[str, ...], refused: dict[str, str] | None = None
) -> list[Candidate]:
    """The stream's regular files in `directory` (symlinks followed); vanished files are skipped.

    The stream's names that are not regular files or cannot be stat'ed are left out; with
    `refused`, each is put there with its reason (``not_regular_file``, ``dangling_symlink``,
    ``permission_denied`` … see `agent.ingest.tracked.refusal_reason`).
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out: list[Candidate] = []
    for name in names:
        rank = rotation_rank(name, patterns)
        if rank is None:
            continue
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except OSError as exc:  # vanished, broken symlink, permission
            reason = refusal_reason(exc)
            if reason == VANISHED and os.path.islink(path):
                reason = "dangling_symlink"
            if refused is not None and reason != VANISHED:
                refused[path] = reason
            continue
        if not stat.S_ISREG(st.st_mode):
            if refused is not None:
                refused[path] = NOT_REGULAR
            continue
        out.append(Candidate(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, rank))
    return out


def stable_listing(
    directory: str, patterns: tuple[str, ...], refused: dict[str, str] | None = None
) -> tuple[list[Candidate], int]:
    """The stream's files, listed until two listings in a row name the same files.

    Returns the listing and how many listings were repeated; `refused` gets the refusals
    of the listing returned (see `list_candidates`). Listing a directory is
    not atomic: a rotation's renames during it can hide a file (its name listed before
    the rename and stat'ed after it finds its successor). A file missed that way would
    be found by the next scan, after its successor's lines.
    """
    found: dict[str, str] = {}
    listing = list_candidates(directory, patterns, found)
    repeated = 0
    for _ in range(MAX_LISTINGS - 1):
        again: dict[str, str] = {}
        listed = list_candidates(directory, patterns, again)
        if _names(listed) == _names(listing):
            listing, found = listed, again
            break
        repeated += 1
        listing, found = listed, again
    if refused is not None:
        refused.update(found)
    return listing, repeated


def open_listed(
    directory: str, patterns: tuple[str, ...], c: Candidate, opener: Opener
) -> tuple[int, os.stat_result, Candidate] | None:
    """Open the file a listing found, by its identity: under its listed name, or where it moved.

    A rotation going on renames files between the listing and the open; the name may then
    hold another file. The directory is listed again to find the listed inode's new name
    (at most `MAX_LISTINGS` times). None when it vanished or cannot be opened.
    """
    for _ in range(MAX_LISTINGS):
        opened = opener(c.path)
        if opened is None:
            return None
        fd, st = opened
        if (st.st_dev, st.st_ino) == (c.dev, c.ino):
            return fd, st, c
        os.close(fd)
        moved = next(
            (m for m in list_candidates(directory, patterns) if (m.dev, m.ino) == (c.dev, c.ino)), None
        )
        if moved is None:
            return None
        c = moved
    return None


def signature(directory: str, patterns: tuple[str, ...]) -> Signature:
    """What the stat poll compares: every file of the stream with its inode, size and mtime."""
    return tuple(
        (c.path, c.ino, c.size, c.mtime_ns)
        for c in sorted(list_candidates(directory, patterns), key=lambda c: c.path)
    )


def symlink_dirs(directory: str, candidates: Iterable[Candidate]) -> set[str]:
    """Directories where symlinked files of the stream really live (writes there need a watch too)."""
    dirs = set()
    here = os.path.realpath(directory)
    for c in candidates:
        if os.path.islink(c.path):
            target_dir = os.path.dirname(os.path.realpath(c.path))
            if target_dir != here:
                dirs.add(target_dir)
    return dirs


def order_key(mtime_ns: int, rank: int, path: str) -> tuple[int, int, str]:
    """Sort key of the order rule: oldest modification first, then higher rotation rank, then name."""
    return (mtime_ns, -rank, path)


def _names(listing: list[Candidate]) -> set[tuple[str, int, int]]:
    return {(c.path, c.dev, c.ino) for c in listing}
