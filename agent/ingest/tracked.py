"""One open file of a stream and how far it was consumed."""

from __future__ import annotations

import errno
import os
import secrets
import stat

from agent.ingest.copies import Pending
from agent.ingest.identity import (
    HEAD_BYTES,
    MARKER_MAX_BYTES,
    ContentMark,
    digest,
    marker_after,
    meaningful_head,
    pread_exact,
)


class TrackedFile:
    """One open file of the stream and how far it was consumed."""

    __slots__ = (
        "data_start",
        "dev",
        "fd",
        "gone",
        "head",
        "head_at",
        "header",
        "header_pending",
        "ino",
        "key",
        "last_change",
        "last_mtime",
        "last_size",
        "marker",
        "offset",
        "path",
        "pending",
        "rank",
        "seen_at",
        "skipping",
    )

    def __init__(self, fd: int, dev: int, ino: int, path: str, rank: int, csv: bool, now: float) -> None:
        self.fd, self.dev, self.ino, self.key = fd, dev, ino, new_key(dev, ino)
        self.path, self.rank = path, rank
        self.offset = 0
        self.head = b""
        """The first ≤ 1 KiB consumed from `head_at` on: the leading NUL hole is not part of it."""
        self.head_at = 0
        self.marker = b""
        """The bytes just before `offset` (see `marker_after`), NULs included."""
        self.header: bytes | None = None
        self.header_pending = csv
        self.skipping = False
        self.data_start = 0
        self.gone = False
        self.pending: Pending | None = None
        self.seen_at: int | None = None
        """Where the content's first byte that is not NUL was when the file was opened or restarted."""
        self.last_size = -1
        self.last_mtime = -1
        self.last_change = now

    def mark(self) -> ContentMark:
        """What was consumed so far, as hashes."""
        return ContentMark(
            self.offset,
            self.head_at,
            len(self.head),
            digest(self.head),
            len(self.marker),
            digest(self.marker),
        )

    def consume(self, buf: bytes) -> None:
        """Move past `buf`, the bytes at the current offset."""
        if len(self.head) < HEAD_BYTES:
            if self.head:
                self.head += buf[: HEAD_BYTES - len(self.head)]
            else:  # the head starts at the first byte that is not NUL
                meaningful = buf.lstrip(b"\x00")
                if meaningful:
                    self.head_at = self.offset + len(buf) - len(meaningful)
                    self.head = meaningful[:HEAD_BYTES]
        self.marker = marker_after(self.marker, buf)
        self.offset += len(buf)

    def skip_nuls(self, n: int) -> None:
        """Move past `n` NUL bytes (a hole) without reading them."""
        if self.head and len(self.head) < HEAD_BYTES:
            self.head += bytes(min(n, HEAD_BYTES - len(self.head)))
        self.marker = marker_after(self.marker, bytes(min(n, MARKER_MAX_BYTES)))
        self.offset += n

    def consume_to(self, size: int, chunk: int) -> None:
        """Move past everything up to `size`, reading it in pieces of `chunk` bytes."""
        while self.offset < size:
            data = os.pread(self.fd, min(chunk, size - self.offset), self.offset)
            if not data:
                break
            self.consume(data)

    def skip_to(self, size: int, header: bytes | None, data_start: int) -> None:
        """Mark the file as consumed up to `size` without returning its lines."""
        self.data_start = min(data_start, size)
        self.offset = size
        found = meaningful_head(self.fd, size)
        self.head_at, self.head = found if found is not None else (0, b"")
        back = min(MARKER_MAX_BYTES, size)
        self.marker = marker_after(b"", pread_exact(self.fd, back, size - back))
        self.header = header
        self.header_pending = False

    def resume_at(self, mark: ContentMark) -> None:
        """Take over a position consumed elsewhere (a saved state, or the copy's original)."""
        self.offset = mark.offset
        self.head_at = mark.head_at
        self.head = pread_exact(self.fd, mark.head_len, mark.head_at)
        self.marker = pread_exact(self.fd, mark.marker_len, mark.offset - mark.marker_len)

    def source_head(self, length: int) -> tuple[int, bytes] | None:
        """The head a copy of this file would start with, and where: up to `length` bytes.

        The head consumed so far when there is one: it stays what was read even if the file
        is truncated under us this very moment (copytruncate truncates right after copying);
        what follows it on disk when it is shorter. Else the head on disk now (nothing of it
        was returned, so a copy of it is no repeat). None when nothing but NULs is known of it.
        """
        if self.head:
            rest = length - len(self.head)
            if rest <= 0:
                return self.head_at, self.head[:length]
            return self.head_at, self.head + pread_exact(self.fd, rest, self.head_at + len(self.head))
        if self.seen_at is None:  # empty (or a hole) when last looked at: look again
            found = meaningful_head(self.fd, os.fstat(self.fd).st_size)
            self.seen_at = found[0] if found is not None else None
        if self.seen_at is None:
            return None
        return self.seen_at, pread_exact(self.fd, length, self.seen_at)

    def marker_intact(self) -> bool:
        """Whether the bytes before the offset are still the ones consumed."""
        n = len(self.marker)
        return pread_exact(self.fd, n, self.offset - n) == self.marker

    def content_intact(self) -> bool:
        """Whether the head and the bytes before the offset are still the ones consumed.

        Both: a rewrite with lines of the same shape can leave the bytes before the offset
        alike, and a rewrite that keeps the head (a CSV header) leaves the head alike.
        """
        if self.head and pread_exact(self.fd, len(self.head), self.head_at) != self.head:
            return False
        return not self.marker or self.marker_intact()

    def restart(self, csv: bool) -> None:
        """Forget what was consumed: the file now holds new content, read from 0."""
        self.key = new_key(self.dev, self.ino)
        self.offset = 0
        self.head = b""
        self.head_at = 0
        self.marker = b""
        self.header_pending = csv
        self.skipping = False
        self.data_start = 0
        self.pending = None
        self.seen_at = None


def new_key(dev: int, ino: int) -> str:
    """A fresh identity for content found in (dev, ino): new after every truncation."""
    return f"{dev:x}:{ino:x}:{secrets.token_hex(4)}"


def open_file(path: str) -> tuple[int, os.stat_result] | None:
    """Open a regular file for reading and stat it; None if it vanished, cannot be read or is not regular.

    See `open_checked` for why it cannot block; this form drops the reason.
    """
    opened = open_checked(path)
    return None if isinstance(opened, str) else opened


def open_checked(path: str) -> tuple[int, os.stat_result] | str:
    """Open a regular file for reading and stat it, or say why not (a `refusal_reason`).

    Opened with O_NONBLOCK, so a FIFO or device node in place of a log file cannot block the
    loop in ``open()``; it is refused after fstat (``not_regular_file``; the next scan looks again).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        return refusal_reason(exc)
    try:
        status = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        return refusal_reason(exc)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        return NOT_REGULAR
    return fd, status


NOT_REGULAR = "not_regular_file"
VANISHED = "vanished"
"""A path gone between its listing and its open: rotation's ordinary race, counted but not a fault."""

_REASONS = {
    errno.ENOENT: VANISHED,
    errno.ENOTDIR: VANISHED,
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EMFILE: "too_many_open_files",
    errno.ENFILE: "too_many_open_files",
    errno.ELOOP: "symlink_loop",
    errno.EIO: "io_error",
}


def refusal_reason(exc: OSError) -> str:
    """The snake_case reason a path is refused for, from the error opening or stat'ing it."""
    known = _REASONS.get(exc.errno or 0)
    if known is not None:
        return known
    name = errno.errorcode.get(exc.errno or 0, "unknown")
    return f"os_error_{name.lower()}"
