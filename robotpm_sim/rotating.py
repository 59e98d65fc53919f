"""A log file that rotates by size like a controller's logger, and reading a rotated set back."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np


class RotatingLog:
    """Appends record lines to ``directory/name``, rotating by size like a controller's logger.

    Before a line would take the file past ``rotate_bytes``, the file is renamed to ``name.1``
    (older ones shift to ``.2``, ``.3`` …; beyond ``keep`` they are deleted) and a new file is
    created that starts with the header again. A file always holds at least one record, and
    lines are never split across files.
    """

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        header: bytes,
        rotate_bytes: int | None = None,
        keep: int | None = None,
    ) -> None:
        if rotate_bytes is not None and rotate_bytes <= 0:
            raise ValueError("rotate_bytes must be > 0")
        if keep is not None and keep < 1:
            raise ValueError("keep must be >= 1")
        self.path = directory / name
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self.rotations = 0
        self.lines = 0
        self._header = header
        directory.mkdir(parents=True, exist_ok=True)
        self._file = self._open_new()

    def _open_new(self) -> BinaryIO:
        handle = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        handle.write(self._header)
        handle.flush()
        self._size = len(self._header)
        self._records_in_file = 0
        return handle

    def write(self, data: bytes) -> None:
        """Append complete lines (``data`` ends with a newline), rotating where needed; flush."""
        if not data:
            return
        if self.rotate_bytes is None:
            self._file.write(data)
            self._size += len(data)
            self._count(data.count(b"\n"))
            self._file.flush()
            return
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x0A) + 1
        pos = 0
        while pos < len(data):
            # lines from pos that fit: cumulative size after each line
            first = int(np.searchsorted(ends, pos, side="right"))
            sizes = self._size + ends[first:] - pos
            fit = int(np.searchsorted(sizes, self.rotate_bytes, side="right"))
            if fit == 0 and self._records_in_file == 0:
                fit = 1  # a line longer than the limit still goes somewhere
            if fit == 0:
                self._rotate()
                continue
            stop = int(ends[first + fit - 1])
            self._file.write(data[pos:stop])
            self._size += stop - pos
            self._count(fit)
            pos = stop
            if pos < len(data):
                self._rotate()
        self._file.flush()

    def _count(self, n: int) -> None:
        self.lines += n
        self._records_in_file += n

    def _rotate(self) -> None:
        self._file.close()
        directory, name = self.path.parent, self.path.name
        if self.keep is not None:
            (directory / f"{name}.{self.keep}").unlink(missing_ok=True)
            top = self.keep - 1
        else:
            top = 0
            while (directory / f"{name}.{top + 1}").exists():
                top += 1
        for k in range(top, 0, -1):
            older = directory / f"{name}.{k}"
            if older.exists():
                os.replace(older, directory / f"{name}.{k + 1}")
        os.replace(self.path, directory / f"{name}.1")
        self.rotations += 1
        self._file = self._open_new()

    def close(self) -> None:
        """Close the current file."""
        self._file.close()

    def __enter__(self) -> RotatingLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_log_lines(directory: Path, name: str) -> Iterator[bytes]:
    """Every record line of a rotated log set, oldest file first, headers skipped."""
    rotated = sorted(
        (p for p in directory.glob(f"{name}.*") if p.suffix.lstrip(".").isdigit()),
        key=lambda p: -int(p.suffix.lstrip(".")),
    )
    for path in [*rotated, directory / name]:
        with open(path, "rb") as handle:
            for line in handle:
                if not line.startswith(b"ts,"):
                    yield line
