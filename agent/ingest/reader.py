r"""Reading: complete lines out of an open file, over-long and header-less lines refused.

`LineReader.read_file` returns `LineBlock`s of complete lines (each ending in
``\n``) and never moves past an unterminated last line. A CSV file's header line
is taken at its start and handed out with every block; a file without one (a
writer that went on after truncation) uses the stream's last header. NUL bytes at
a line start (a stale writer after copytruncate) are skipped. Over-long lines
(> ``max_line_bytes``) are returned as `RejectedLine` (reason ``too_long``) and
skipped up to their newline; reading goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.config import IngestConfig
from agent.contract.records import RejectedLine
from agent.contract.streams import StreamConfig
from agent.errors import IngestError
from agent.ingest.identity import data_after, pread_exact
from agent.ingest.tracked import TrackedFile

RAW_KEEP = 256
"""How many bytes of a rejected line are kept for the quarantine."""


@dataclass(frozen=True, slots=True)
class LineBlock:
    """Complete lines read from one file, with where they came from."""

    file_key: str
    """Stable identity of the file's content (survives renames and restarts; new after truncation)."""
    path: Path
    """The path the file was read from (its current name)."""
    data: bytes
    """Complete lines only, each ending with ``b"\\n"``; never the CSV header; may be empty."""
    offset: int
    """Byte offset of ``data[0]`` in the file."""
    header: bytes | None
    """The file's CSV header line (no newline) for ``format="csv"``, else None."""
    rejected: tuple[RejectedLine, ...] = ()
    """Lines refused while reading (too long, unterminated, no header), absolute offsets."""


class LineReader:
    """Reads complete lines of one stream's files; keeps the stream's last CSV header."""

    def __init__(self, stream: StreamConfig, ingest: IngestConfig, counters: dict[str, int]) -> None:
        self._csv = stream.format == "csv"
        schema = stream.record_schema()
        self._delimiter = schema.delimiter.encode()
        self._quote = schema.quote.encode()
        self._ts_name = stream.timestamp_field.encode()
        self._max_line = ingest.max_line_bytes
        self.chunk = max(ingest.read_chunk_bytes, self._max_line + 2)
        """Bytes per read: at least one longest line with its newline."""
        self._counters = counters
        self._path_objects: dict[str, Path] = {}
        self.last_header: bytes | None = None
        """The newest CSV header seen, for files whose writer went on without one."""
        self.changed_under_us = False
        """Set when a read found a file changed since its check: look again soon."""

    def path_of(self, f: TrackedFile) -> Path:
        """The file's current path as a `Path` (built once per name: this runs on every read)."""
        path = self._path_objects.get(f.path)
        if path is None:
            if len(self._path_objects) > 256:
                self._path_objects.clear()
            path = self._path_objects[f.path] = Path(f.path)
        return path

    def header_for(self, f: TrackedFile) -> bytes | None:
        """The CSV header that applies to the file's lines (None for JSON lines)."""
        if not self._csv:
            return None
        return f.header if f.header is not None else self.last_header

    def read_file(self, f: TrackedFile, budget: int, out: list[LineBlock]) -> int:
        """Read complete lines of one file; returns the line bytes used from the budget."""
        size = f.last_size
        used = 0
        while f.offset < size and used < budget:
            want = min(size - f.offset, self.chunk)
            if budget - used < want:
                want = max(budget - used, min(size - f.offset, self._max_line + 2))
            try:
                data = os.pread(f.fd, want, f.offset)
            except OSError as exc:
                raise IngestError(f"{f.path}: read failed: {exc}") from exc
            if not data:
                break
            self._counters["bytes"] += len(data)
            if f.skipping:
                newline = data.find(b"\n")
                if newline < 0:
                    f.consume(data)
                else:
                    f.consume(data[: newline + 1])
                    f.skipping = False
                continue
            if data[0] == 0:
                if f.marker[-1:] not in (b"", b"\x00") and not f.content_intact():
                    # NULs right after lines already read, which are gone: the file was truncated
                    # under us and a writer without O_APPEND went on past our offset. Leave it to
                    # the change check (it keeps the old content's identity for the copy).
                    f.last_mtime = -1
                    self.changed_under_us = True
                    break
                stripped = data.lstrip(b"\x00")
                skipped = len(data) - len(stripped)
                if not stripped:  # the hole may go on: jump over what the filesystem does not store
                    skipped = data_after(f.fd, f.offset + skipped, size) - f.offset
                self._counters["nul_bytes_skipped"] += skipped
                f.skip_nuls(skipped)
                continue
            if f.header_pending:
                if not self._take_header(f, data, out):
                    break
                continue
            last = data.rfind(b"\n")
            if last < 0:
                if len(data) > self._max_line:
                    self._too_long(f, data, out, closed=False)
                    continue
                break  # a partial line: wait for its newline
            complete = data[: last + 1]
            self._emit(f, complete, out)
            used += len(complete)
        return used

    def settle(self, f: TrackedFile, out: list[LineBlock]) -> bool:
        """Finish a quiet rotated or vanished file: nothing more is coming to it.

        What is left after its last newline is an unterminated line (rejected as
        ``unterminated``), the rest of an over-long line, or NULs. Returns False while
        complete lines are still unread (`read_file` takes them first).
        """
        size = f.last_size
        if size <= f.offset:
            return True
        if f.skipping:
            f.consume_to(size, self.chunk)  # the tail of a line already rejected as too long
        elif size - f.offset > self._max_line:
            return False  # lines read_file has not reached yet (a long catch-up): never skip them
        else:
            rest = pread_exact(f.fd, size - f.offset, f.offset)
            if b"\n" in rest:
                return False  # complete lines not read yet (budget): read_file takes them first
            if not rest.strip(b"\x00"):
                f.skip_nuls(len(rest))
            else:
                reject = RejectedLine(
                    f.offset,
                    len(rest),
                    "unterminated",
                    "last line of a rotated file never got its newline",
                    rest[:RAW_KEEP],
                )
                self._counters["unterminated"] += 1
                out.append(LineBlock(f.key, self.path_of(f), b"", f.offset, self.header_for(f), (reject,)))
                f.consume(rest)
        f.skipping = f.header_pending = False
        return True

    def _looks_like_header(self, line: bytes) -> bool:
        wanted = self._ts_name.strip()  # cells may be quoted (RFC 4180) and padded
        return wanted in (field.strip().strip(self._quote).strip() for field in line.split(self._delimiter))

    def _take_header(self, f: TrackedFile, data: bytes, out: list[LineBlock]) -> bool:
        """Take the CSV header line at the file's start; False while it is incomplete."""
        newline = data.find(b"\n")
        if newline < 0:
            if len(data) > self._max_line:
                f.header_pending = False
                self._too_long(f, data, out, closed=False)
                return True
            return False
        line = data[:newline].rstrip(b"\r").lstrip(b"\x00")
        f.header_pending = False
        if self._looks_like_header(line):
            f.header = line
            self.last_header = line
            f.consume(data[: newline + 1])
            f.data_start = f.offset
        elif f.header is None:
            f.header = self.last_header  # a writer that went on after truncation, without a header
        return True

    def _too_long(self, f: TrackedFile, data: bytes, out: list[LineBlock], *, closed: bool) -> None:
        reject = RejectedLine(
            f.offset,
            len(data),
            "too_long",
            f"line longer than {self._max_line} bytes; skipped up to its newline",
            data[:RAW_KEEP],
        )
        self._counters["lines_too_long"] += 1
        out.append(LineBlock(f.key, self.path_of(f), b"", f.offset, self.header_for(f), (reject,)))
        f.consume(data)
        f.skipping = not closed

    def _emit(self, f: TrackedFile, complete: bytes, out: list[LineBlock]) -> None:
        """Return the complete lines at f.offset, splitting out over-long ones, and move past them."""
        header = self.header_for(f)
        path = self.path_of(f)
        base = f.offset
        if self._csv and header is None:
            out.append(LineBlock(f.key, path, b"", base, None, tuple(self._no_header(complete, base))))
            f.consume(complete)
            return
        limit = self._max_line
        n = len(complete)
        if n <= limit + 1:
            out.append(LineBlock(f.key, path, complete, base, header))
            f.consume(complete)
            return
        rejected: list[RejectedLine] = []
        segment_start = pos = 0
        while n - pos > limit + 1:
            newline = complete.rfind(b"\n", pos, pos + limit + 1)
            if newline >= 0:
                pos = newline + 1
                continue
            end = complete.find(b"\n", pos)
            if pos > segment_start:
                out.append(LineBlock(f.key, path, complete[segment_start:pos], base + segment_start, header))
            rejected.append(
                RejectedLine(
                    base + pos,
                    end - pos,
                    "too_long",
                    f"line of {end - pos} bytes is longer than {limit}",
                    complete[pos : pos + RAW_KEEP],
                )
            )
            self._counters["lines_too_long"] += 1
            pos = segment_start = end + 1
        out.append(
            LineBlock(f.key, path, complete[segment_start:], base + segment_start, header, tuple(rejected))
        )
        f.consume(complete)

    def _no_header(self, complete: bytes, base: int) -> list[RejectedLine]:
        rejected = []
        start = 0
        for line in complete.split(b"\n")[:-1]:
            rejected.append(
                RejectedLine(
                    base + start, len(line), "no_header", "CSV file without a header line", line[:RAW_KEEP]
                )
            )
            start += len(line) + 1
        self._counters["no_header"] += len(rejected)
        return rejected
