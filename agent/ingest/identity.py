"""How a file's content is recognised: head fingerprint and offset marker.

**Identity.** A file is (device, inode) **plus** what we consumed from it: a
SHA-256 of its head (the first ≤ 1 KiB we read) and a marker, the SHA-256 of the
≤ 64 bytes just before the saved offset. A file only resumes at a saved offset if
both still match, which catches inode reuse, truncation and copytruncate to a
smaller, the same or a larger size; and a renamed or copied file is re-found by
its content when its inode differs (rotation while the agent was stopped,
copytruncate's copy).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

HEAD_BYTES = 1024
"""How much of a file's head its fingerprint covers."""

MARKER_BYTES = 64
"""How many bytes before the saved offset the offset marker covers."""


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


def same_prefix(fd_a: int, fd_b: int, length: int) -> bool:
    """Whether two files hold the same first `length` bytes."""
    offset = 0
    while offset < length:
        n = min(1 << 20, length - offset)
        a = pread_exact(fd_a, n, offset)
        if a != pread_exact(fd_b, n, offset) or len(a) < n:
            return False
        offset += n
    return True


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

    def to_json(self) -> dict[str, Any]:
        """The mark as the JSON fields of a saved state."""
        return {
            "offset": self.offset,
            "head_len": self.head_len,
            "head": self.head_sha,
            "marker_len": self.marker_len,
            "marker": self.marker_sha,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ContentMark:
        """The mark saved by `to_json` (raises KeyError, TypeError or ValueError when damaged)."""
        return cls(
            int(entry["offset"]),
            int(entry["head_len"]),
            str(entry["head"]),
            int(entry["marker_len"]),
            str(entry["marker"]),
        )
