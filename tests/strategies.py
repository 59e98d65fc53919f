"""Shared test helpers for ingestion: a numbering log writer, a follower harness, Hypothesis strategies.

Every line a `LogDir` writes is unique (``<seq>,<seq>``), so a test can tell a
lost line from a duplicated one by content alone.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from agent.config import IngestConfig
from agent.contract.records import RejectedLine
from agent.contract.streams import StreamConfig
from agent.ingest import LineBlock, StreamFollower

HEADER = b"timestamp,a"


def stream_config(directory: Path, patterns: tuple[str, ...] = ("arm1.csv",), **extra: Any) -> StreamConfig:
    """A one-channel CSV stream over `directory`."""
    return StreamConfig(
        name=extra.pop("name", "arm1"),
        directory=directory,
        patterns=patterns,
        timestamp_field="timestamp",
        channels={"a": "a"},
        **extra,
    )


def ingest_config(mode: str = "poll", **extra: Any) -> IngestConfig:
    """Ingest settings for tests: fast polls in poll mode; in inotify mode only inotify finds new files."""
    if mode == "poll":
        base: dict[str, Any] = {"watch": "poll", "poll_interval_s": 0.05, "rescan_interval_s": 0.05}
    else:
        base = {"watch": "inotify", "poll_interval_s": 30.0, "rescan_interval_s": 30.0}
    base.update(coalesce_ms=2.0, release_after_s=0.3)
    base.update(extra)
    return IngestConfig(**base)


class LogDir:
    """A log directory with one logger writing numbered lines, and rotation operations on it.

    With ``o_append=False`` the logger writes the current file through a descriptor
    opened without ``O_APPEND``, as many industrial loggers do: after a copytruncate
    or an outside truncation it goes on writing at its old offset, so the file
    starts with a hole of NUL bytes. It reopens the file (and writes at its end)
    only when it starts a new file itself (`create`).
    """

    def __init__(
        self, root: Path, name: str = "arm1.csv", header: bytes | None = HEADER, *, o_append: bool = True
    ) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.header = header
        self.seq = 0
        self.o_append = o_append
        self._fd: int | None = None

    @property
    def current(self) -> Path:
        return self.dir / self.name

    def rotated(self, n: int) -> Path:
        return self.dir / f"{self.name}.{n}"

    def lines(self, n: int) -> list[bytes]:
        """The next `n` unique line contents (no newline)."""
        out = []
        for _ in range(n):
            self.seq += 1
            out.append(f"{self.seq},{self.seq}".encode())
        return out

    def create(self, path: Path | None = None) -> None:
        """Start a new file (with the header) at `path` (default: the current name)."""
        target = path or self.current
        if path is None:
            self.close_writer()  # the logger starts the new file: it reopens it
        with open(target, "wb") as handle:
            if self.header is not None:
                handle.write(self.header + b"\n")

    def append(self, n: int, path: Path | None = None) -> list[bytes]:
        """Append `n` complete lines; returns their contents."""
        lines = self.lines(n)
        self.append_raw(b"".join(line + b"\n" for line in lines), path)
        return lines

    def append_raw(self, data: bytes, path: Path | None = None) -> None:
        if path is None and not self.o_append:
            self._write_stale(data)
            return
        with open(path or self.current, "ab") as handle:
            handle.write(data)

    def _write_stale(self, data: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self.current, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
            os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def close_writer(self) -> None:
        """Close the logger's descriptor (a logger without O_APPEND reopens at the file's end)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def copy_in_steps(self, target: Path, observe: Callable[[str], None]) -> None:
        """Copy the current file to `target` as logrotate does: create it empty, then fill it.

        Calls ``observe("empty")``, ``observe("partial")`` (less than half copied) and
        ``observe("full")`` on the way, e.g. to let the follower look at that moment.
        """
        data = self.current.read_bytes()
        step = max(1, min(700, len(data) // 3))
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        try:
            observe("empty")
            for start in range(0, len(data), step):
                os.write(fd, data[start : start + step])
                if start == 0 and len(data) > step:
                    observe("partial")
        finally:
            os.close(fd)
        observe("full")

    def rotate_rename(self, keep: int = 50) -> None:
        """Logrotate's default: shift .N → .N+1, current → .1, and create a new current file."""
        for n in range(keep, 0, -1):
            if self.rotated(n).exists():
                os.replace(self.rotated(n), self.rotated(n + 1))
        os.replace(self.current, self.rotated(1))
        self.create()

    def copytruncate(self, keep: int = 50, observe: Callable[[str], None] | None = None) -> None:
        """Logrotate's copytruncate: shift, copy current → .1, truncate current in place.

        With `observe`, the copy is made in steps (see `copy_in_steps`) and
        ``observe("truncated")`` is called after the truncation.
        """
        for n in range(keep, 0, -1):
            if self.rotated(n).exists():
                os.replace(self.rotated(n), self.rotated(n + 1))
        if observe is None:
            shutil.copyfile(self.current, self.rotated(1))
            os.truncate(self.current, 0)
            return
        self.copy_in_steps(self.rotated(1), observe)
        os.truncate(self.current, 0)
        observe("truncated")

    def truncate(self, size: int = 0) -> None:
        os.truncate(self.current, size)


@dataclass(eq=False)
class Harness:
    """Drives `StreamFollower`s over one stream like the daemon does, and keeps what they returned.

    ``saved`` is the last committed state; `restart` (graceful) saves then closes,
    `kill` drops the follower without saving. Returned lines are checked for shape
    (complete lines, the right header) as they arrive.

    `clock` is the followers' monotonic clock; `before_read` is called before every read
    (e.g. to give changed files the modification time of a test's own filesystem clock).
    """

    stream: StreamConfig
    ingest: IngestConfig
    _: KW_ONLY
    watch: bool = False
    clock: Callable[[], float] = time.monotonic
    before_read: Callable[[], None] | None = None
    wakeup: threading.Event = field(default_factory=threading.Event, init=False)
    lines: list[bytes] = field(default_factory=list, init=False)
    rejected: list[RejectedLine] = field(default_factory=list, init=False)
    blocks: list[LineBlock] = field(default_factory=list, init=False)
    saved: dict[str, Any] | None = field(default=None, init=False)
    committed: int = field(default=0, init=False)
    """How many of `lines` the last saved state covers (a kill drops the rest)."""
    follower: StreamFollower = field(init=False)

    def __post_init__(self) -> None:
        self.follower = self._new()

    def _new(self) -> StreamFollower:
        follower = StreamFollower(self.stream, self.ingest, self.wakeup, clock=self.clock)
        follower.restore(json.loads(json.dumps(self.saved)) if self.saved is not None else None)
        if self.watch:
            follower.start()
        return follower

    def read(self, max_bytes: int = 1 << 20, save: bool = True) -> int:
        """One read; returns the number of lines it gave. Saves the state after it by default."""
        got = 0
        if self.before_read is not None:
            self.before_read()
        for block in self.follower.read(max_bytes):
            assert not block.data or block.data.endswith(b"\n"), block
            if self.stream.format == "csv" and block.data:
                assert block.header == HEADER, block.header
            for line in block.data.split(b"\n")[:-1]:
                self.lines.append(line.rstrip(b"\r"))
                got += 1
            self.rejected.extend(block.rejected)
            self.blocks.append(block)
        if save:
            self.save()
        return got

    def drain(self, max_bytes: int = 1 << 20) -> int:
        """Read until a read gives nothing."""
        total = 0
        for _ in range(10_000):
            got = self.read(max_bytes)
            total += got
            if not got:
                return total
        raise AssertionError(f"reads never ran dry: {total} lines, {len(self.duplicates())} duplicated")

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Read as the daemon does (woken by the watcher, or on timeout) until `count` lines arrived."""
        deadline = time.monotonic() + timeout
        while len(self.lines) < count and time.monotonic() < deadline:
            self.wakeup.wait(0.1)
            self.wakeup.clear()
            self.read()
        assert len(self.lines) >= count, f"got {len(self.lines)} of {count} lines"

    def settle(self, seconds: float) -> None:
        """Keep reading for a while (so nothing more arrives that should not)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.wakeup.wait(0.05)
            self.wakeup.clear()
            self.read()

    def save(self) -> None:
        self.saved = json.loads(json.dumps(self.follower.state()))
        self.committed = len(self.lines)

    def restart(self) -> None:
        """Graceful: save, close, start a new follower from the saved state."""
        self.save()
        self.follower.close()
        self.follower = self._new()

    def kill(self) -> None:
        """Crash: the follower's memory is gone; a new one starts from the last saved state.

        Lines returned after that state was saved are dropped, as the daemon's uncommitted
        transaction would be.
        """
        self.follower.close()
        del self.lines[self.committed :]
        self.follower = self._new()

    def close(self) -> None:
        self.follower.close()

    def duplicates(self) -> list[bytes]:
        return [line for line, n in Counter(self.lines).items() if n > 1]


# ---------------------------------------------------------------- Hypothesis strategies

line_counts = st.integers(min_value=0, max_value=40)
"""How many lines one write step appends."""

partial_fragments = st.binary(min_size=1, max_size=12).map(
    lambda b: b.replace(b"\n", b"x").replace(b"\x00", b"y")
)
"""Bytes of an unterminated line (no newline, no NUL)."""

bad_csv_lines = st.one_of(
    st.just(b"1,2,3"),
    st.just(b"abc,def"),
    st.just(b"1.0,nan"),
    st.just(b"1.0,inf"),
    st.just(b"\xff\xfe,1"),
    st.just(b"1,\x00\x01"),
    st.binary(min_size=1, max_size=64).filter(lambda b: b"\n" not in b),
)
"""Lines that a one-channel CSV parser must refuse (or, for random bytes, may accept)."""
