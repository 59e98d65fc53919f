"""Which files belong to a stream, in what order they are read, and how a file is recognised.

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

**Identity.** A file is (device, inode) **plus** what we consumed from it: a
SHA-256 of its head (the first ≤ 1 KiB we read) and a marker, the SHA-256 of the
≤ 64 bytes just before the saved offset. A file only resumes at a saved offset if
both still match, which catches inode reuse, truncation and copytruncate to a
smaller, the same or a larger size; and a renamed or copied file is re-found by
its content when its inode differs (rotation while the agent was stopped,
copytruncate's copy).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import stat
from dataclasses import dataclass

HEAD_BYTES = 1024
"""How much of a file's head its fingerprint covers."""

MARKER_BYTES = 64
"""How many bytes before the saved offset the offset marker covers."""

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip", ".z", ".lzma", ".br", ".7z")
"""Rotated files with these suffixes are ignored."""

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


def list_candidates(directory: str, patterns: tuple[str, ...]) -> list[Candidate]:
    """The stream's regular files in `directory` (symlinks followed); vanished files are skipped."""
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
        except OSError:  # vanished, broken symlink, permission
            continue
        if not _is_regular(st.st_mode):
            continue
        out.append(Candidate(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, rank))
    return out


def order_key(mtime_ns: int, rank: int, path: str) -> tuple[int, int, str]:
    """Sort key of the order rule: oldest modification first, then higher rotation rank, then name."""
    return (mtime_ns, -rank, path)


def digest(data: bytes) -> str:
    """The hex SHA-256 used for head fingerprints and offset markers."""
    return hashlib.sha256(data).hexdigest()


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """Up to `length` bytes at `offset` (fewer only at end of file)."""
    parts: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        parts.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class ContentMark:
    """What we consumed from a file, as hashes: enough to re-find and verify it."""

    offset: int
    head_len: int
    head_sha: str
    marker_len: int
    marker_sha: str

    def head_matches(self, fd: int) -> bool:
        """Whether the file behind `fd` starts with the head we consumed."""
        if self.head_len == 0:
            return True
        head = pread_exact(fd, self.head_len, 0)
        return len(head) == self.head_len and digest(head) == self.head_sha

    def marker_matches(self, fd: int) -> bool:
        """Whether the bytes before `offset` are still the ones we consumed."""
        if self.marker_len == 0:
            return True
        marker = pread_exact(fd, self.marker_len, self.offset - self.marker_len)
        return len(marker) == self.marker_len and digest(marker) == self.marker_sha

    def matches(self, fd: int, size: int) -> bool:
        """Whether the file holds everything we consumed, unchanged (so reading resumes at `offset`)."""
        return size >= self.offset and self.head_matches(fd) and self.marker_matches(fd)


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)
