"""How a file's content is recognised: head fingerprint and offset marker.

**Identity.** A file is (device, inode) **plus** what we consumed from it: a
SHA-256 of its head (the first ≤ 1 KiB we read) and a marker, the SHA-256 of the
bytes just before the saved offset: at least 64, and back to the start of the last
line (≤ 1 KiB), so that it holds that line's timestamp. (Lines of one logger often
end alike, e.g. in idle channels' zeros: 64 bytes of line ends tell one line from
another poorly.) A file only resumes at a saved offset if
both still match, which catches inode reuse, truncation and copytruncate to a
smaller, the same or a larger size; and a renamed or copied file is re-found by
its content when its inode differs (rotation while the agent was stopped,
copytruncate's copy).

**Meaningful bytes.** A logger that writes without ``O_APPEND`` goes on at its old
offset after a copytruncate, so the truncated file, and every later copy of it,
starts with a hole of NUL bytes. The head fingerprint therefore starts at the first
byte that is not NUL (``head_at``): a copy has the same hole and the same head
there, an unrelated file with a hole does not. Content consumed so far that is only
NULs has no head (``head_len == 0``) and identifies nothing: it is never matched
with another file, only re-verified in its own (where the marker, NULs included,
still proves the bytes before the offset are unchanged).
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass, fields
from typing import Any, Final

HEAD_BYTES = 1024
"""How much of a file's head its fingerprint covers."""

MARKER_BYTES = 64
"""How many bytes before the saved offset the offset marker covers at least."""

MARKER_MAX_BYTES = 1024
"""How far back the marker reaches to include the start of the last line (its timestamp)."""


def marker_after(marker: bytes, buf: bytes) -> bytes:
    """The marker once `buf` is consumed after the bytes `marker` ended with.

    The last `MARKER_BYTES` bytes, extended back to the start of the last line they are
    part of, at most `MARKER_MAX_BYTES` in all.
    """
    tail = buf[-MARKER_MAX_BYTES:] if len(buf) >= MARKER_MAX_BYTES else (marker + buf)[-MARKER_MAX_BYTES:]
    newline = tail.rfind(b"\n", 0, max(0, len(tail) - MARKER_BYTES))
    return tail[newline + 1 :]  # all of the tail when that line started before it


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


def same_bytes(fd_a: int, fd_b: int, start: int, end: int) -> bool:
    """Whether two files hold the same bytes in ``[start, end)``."""
    offset = start
    while offset < end:
        n = min(1 << 20, end - offset)
        a = pread_exact(fd_a, n, offset)
        if a != pread_exact(fd_b, n, offset) or len(a) < n:
            return False
        offset += n
    return True


def same_ends(fd_a: int, fd_b: int, end: int) -> bool:
    """Whether two files still agree on the head and the last bytes of ``[0, end)``.

    The cheap re-check of a prefix found equal before: a file rewritten since (truncated,
    then written again to any size) differs there, as the head and offset marker tell.
    """
    head_end = min(HEAD_BYTES, end)
    return same_bytes(fd_a, fd_b, 0, head_end) and same_bytes(
        fd_a, fd_b, max(head_end, end - MARKER_MAX_BYTES), end
    )


def data_after(fd: int, offset: int, size: int) -> int:
    """Where data may start at or after `offset`: past a sparse hole at once, else `offset`.

    A logger without O_APPEND leaves a hole the filesystem need not store; ``SEEK_DATA``
    skips it without reading it. (A copied hole is stored as NUL bytes and read as such.)
    """
    if offset >= size:
        return offset
    try:
        return min(os.lseek(fd, offset, os.SEEK_DATA), size)
    except OSError as exc:
        # ENXIO: only hole from here to the end; other errors: no SEEK_DATA (read it all)
        return size if exc.errno == errno.ENXIO else offset


def meaningful_head(fd: int, size: int) -> tuple[int, bytes] | None:
    """Where the first byte that is not NUL is, and up to `HEAD_BYTES` bytes from there.

    None when the first `size` bytes are all NUL (a hole, or nothing yet).
    """
    offset = data_after(fd, 0, size)
    while offset < size:
        chunk = os.pread(fd, min(1 << 16, size - offset), offset)
        if not chunk:
            return None
        stripped = chunk.lstrip(b"\x00")
        if stripped:
            at = offset + len(chunk) - len(stripped)
            return at, pread_exact(fd, min(HEAD_BYTES, size - at), at)
        offset += len(chunk)
    return None


_SAVED_AS: Final = {"head_sha": "head", "marker_sha": "marker"}
"""`ContentMark` fields saved under another name (the rest under their own)."""


@dataclass(frozen=True, slots=True)
class ContentMark:
    """What we consumed from a file, as hashes: enough to re-find and verify it."""

    offset: int
    head_at: int
    """Offset of the first consumed byte that is not NUL (0 without a hole)."""
    head_len: int
    """Bytes of the head from `head_at`; 0 when everything consumed was NUL (identifies nothing)."""
    head_sha: str
    marker_len: int
    marker_sha: str

    @property
    def identifies_content(self) -> bool:
        """Whether the mark holds meaningful bytes, so another file can be recognised by it."""
        return self.head_len > 0

    def is_only_line(self, line: bytes) -> bool:
        """Whether all that was consumed (after any NUL hole) is `line` and its line end."""
        if self.offset != self.head_at + self.head_len:
            return False
        return any(
            self.head_len == len(line) + len(end) and self.head_sha == digest(line + end)
            for end in (b"\n", b"\r\n")
        )

    def head_matches(self, fd: int) -> bool:
        """Whether the file behind `fd` holds the head we consumed, at the same place."""
        if self.head_len == 0:
            return True
        head = pread_exact(fd, self.head_len, self.head_at)
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
        return {_SAVED_AS.get(f.name, f.name): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ContentMark:
        """The mark saved by `to_json` (raises KeyError, TypeError or ValueError when damaged).

        A head of NULs only (saved before heads skipped holes) identifies nothing.
        """
        head_len, head_sha = int(entry["head_len"]), str(entry["head"])
        if head_len and head_sha == digest(bytes(head_len)):
            head_len, head_sha = 0, digest(b"")
        return cls(
            int(entry["offset"]),
            int(entry.get("head_at", 0)),
            head_len,
            head_sha,
            int(entry["marker_len"]),
            str(entry["marker"]),
        )
