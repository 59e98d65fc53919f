"""Fluent Bit's rotation stress test: 5 files × 100,000 lines, each rotating at 256 KB, exact counts.

A separate writer process appends to f0.log … f4.log through buffered files (so
lines often land in two writes), renaming each at 256 KB (logrotate style:
``.N → .N+1``, ``f0.log → f0.log.1``) while the follower reads as the daemon
does. Every line must arrive exactly once, in order per file.

The copytruncate variant rotates by copying and truncating in place, with a
writer that opened its files without O_APPEND, as many industrial loggers do:
after each truncation it goes on at its old offset, so the live file and every
later copy start with a growing hole of NUL bytes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.strategies import Harness, ingest_config, stream_config

FILES = 5
LINES = 100_000
ROTATE_AT = 256 * 1024

SHIFT_ROTATED = r"""
import os
def with_header(h):
    h.write("timestamp,a\n")
    return h
def shift_rotated(directory, i):
    # f{i}.log.1 .. .n each move one number up, as logrotate does before it rotates f{i}.log
    base = os.path.join(directory, f"f{i}.log")
    n = 1
    while os.path.exists(f"{base}.{n}"):
        n += 1
    for k in range(n - 1, 0, -1):
        os.replace(f"{base}.{k}", f"{base}.{k + 1}")
    return base
"""
"""The header and the rotated files' renaming, shared by the writer scripts below."""

WRITER = (
    SHIFT_ROTATED
    + r"""
import os, sys
directory, files, lines, rotate_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
handles = {}
PAD = "x" * 24
def open_new(i):
    return with_header(open(os.path.join(directory, f"f{i}.log"), "a", buffering=8192))
def rotate(i):
    handles[i].close()
    base = shift_rotated(directory, i)
    os.replace(base, f"{base}.1")
    handles[i] = open_new(i)
for i in range(files):
    handles[i] = open_new(i)
for n in range(lines):
    for i in range(files):
        h = handles[i]
        h.write(f"{n},{i},{PAD}\n")
        if h.tell() >= rotate_at:
            rotate(i)
for h in handles.values():
    h.close()
"""
)


def follow_writer(logs: Path, mode: str, script: str, deadline_s: float) -> Harness:
    """Run a writer script over `logs` while a follower reads as the daemon does; the follower, closed."""
    h = Harness(
        stream_config(logs, patterns=("f*.log",)),
        ingest_config(mode, coalesce_ms=5.0, rescan_interval_s=1.0, poll_interval_s=0.1),
        watch=True,
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script, str(logs), str(FILES), str(LINES), str(ROTATE_AT)]
    )
    try:
        deadline = time.monotonic() + deadline_s
        while len(h.lines) < FILES * LINES and time.monotonic() < deadline:
            h.wakeup.wait(0.1)
            h.wakeup.clear()
            h.read(4 << 20, save=False)
        assert writer.wait(timeout=60) == 0
        h.drain()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        h.close()
    return h


def assert_each_line_once_in_order(h: Harness, logs: Path) -> None:
    per_file: dict[int, list[int]] = {i: [] for i in range(FILES)}
    for line in h.lines:
        n, i, _ = line.split(b",")
        per_file[int(i)].append(int(n))
    for i in range(FILES):
        assert per_file[i] == list(range(LINES)), f"file f{i}.log: {len(per_file[i])} lines, not exact"
    rotated = [p.name for p in logs.iterdir() if not p.name.endswith(".log")]
    assert len(rotated) >= FILES * 10, sorted(rotated)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_five_files_rotating_at_256k_arrive_exactly_once(tmp_path: Path, mode: str) -> None:
    """500,000 lines through ~70 rotations: each arrives once, in order per file."""
    logs = tmp_path / "logs"
    logs.mkdir()
    h = follow_writer(logs, mode, WRITER, 50)
    assert_each_line_once_in_order(h, logs)


COPYTRUNCATE_WRITER = (
    SHIFT_ROTATED
    + r"""
import os, shutil, sys
directory, files, lines, rotate_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
PAD = "x" * 24
def open_new(i):
    fd = os.open(os.path.join(directory, f"f{i}.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    return with_header(os.fdopen(fd, "w", buffering=8192))  # no O_APPEND: it writes at its own offset
def copytruncate(i):
    handles[i].flush()
    base = shift_rotated(directory, i)
    shutil.copyfile(base, f"{base}.1")
    os.truncate(base, 0)
handles = {i: open_new(i) for i in range(files)}
written = {i: 0 for i in range(files)}
for n in range(lines):
    for i in range(files):
        line = f"{n},{i},{PAD}\n"
        handles[i].write(line)
        written[i] += len(line)
        if written[i] >= rotate_at:
            copytruncate(i)
            written[i] = 0
for h in handles.values():
    h.close()
"""
)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_five_files_copytruncated_under_a_writer_without_o_append_arrive_exactly_once(
    tmp_path: Path, mode: str
) -> None:
    """500,000 lines through ~70 copytruncates by a logger without O_APPEND: each once, in order."""
    logs = tmp_path / "logs"
    logs.mkdir()
    h = follow_writer(logs, mode, COPYTRUNCATE_WRITER, 120)
    assert_each_line_once_in_order(h, logs)
    assert h.follower.stats()["nul_bytes_skipped"] > 0  # the writer really left holes
