"""One open file of a stream and how far it was consumed."""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING

from agent.ingest.identity import HEAD_BYTES, MARKER_BYTES, ContentMark, digest, pread_exact

if TYPE_CHECKING:
    from agent.ingest.rotation import Pending


class TrackedFile:
    """One open file of the stream and how far it was consumed."""

    __slots__ = (
        "data_start",
        "dev",
        "fd",
        "gone",
        "head",
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
        "skipping",
    )

    def __init__(self, fd: int, dev: int, ino: int, path: str, rank: int, csv: bool, now: float) -> None:
        self.fd = fd
        self.dev = dev
        self.ino = ino
        self.path = path
        self.rank = rank
        self.key = new_key(dev, ino)
        self.offset = 0
        self.head = b""
        self.marker = b""
        self.header: bytes | None = None
        self.header_pending = csv
        self.skipping = False
        self.data_start = 0
        self.gone = False
        self.pending: Pending | None = None
        self.last_size = -1
        self.last_mtime = -1
        self.last_change = now

    def mark(self) -> ContentMark:
        """What was consumed so far, as hashes."""
        return ContentMark(
            self.offset, len(self.head), digest(self.head), len(self.marker), digest(self.marker)
        )

    def consume(self, buf: bytes) -> None:
        """Move past `buf`, the bytes at the current offset."""
        if self.offset < HEAD_BYTES:
            self.head += buf[: HEAD_BYTES - self.offset]
        if len(buf) >= MARKER_BYTES:
            self.marker = buf[-MARKER_BYTES:]
        else:
            self.marker = (self.marker + buf)[-MARKER_BYTES:]
        self.offset += len(buf)

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
        self.head = pread_exact(self.fd, min(HEAD_BYTES, size), 0)
        self.marker = pread_exact(self.fd, min(MARKER_BYTES, size), size - min(MARKER_BYTES, size))
        self.header = header
        self.header_pending = False

    def has_data_head(self) -> bool:
        """Whether the consumed head holds more than a CSV header (enough to recognise a copy)."""
        return len(self.head) > self.data_start

    def restart(self, csv: bool) -> None:
        """Forget what was consumed: the file now holds new content, read from 0."""
        self.key = new_key(self.dev, self.ino)
        self.offset = 0
        self.head = b""
        self.marker = b""
        self.header_pending = csv
        self.skipping = False
        self.data_start = 0
        self.pending = None


def new_key(dev: int, ino: int) -> str:
    """A fresh identity for content found in (dev, ino): new after every truncation."""
    return f"{dev:x}:{ino:x}:{secrets.token_hex(4)}"


def open_file(path: str) -> tuple[int, os.stat_result] | None:
    """Open a file for reading and stat it; None if it vanished or cannot be read (the next scan retries)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return fd, os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
