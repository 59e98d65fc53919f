"""The follower against the real logrotate(8): create and copytruncate, with compression of old segments,
and copytruncate under a busy writer (with and without O_APPEND).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from tests.strategies import Harness, LogDir, ingest_config, stream_config

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"


def logrotate(config: Path, state: Path, *, nice: int = 0) -> None:
    command = [LOGROTATE, "-f", "-s", str(state), str(config)]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    subprocess.run(command, check=True, capture_output=True)


@pytest.mark.parametrize("mode", ["inotify", "poll"])
@pytest.mark.parametrize("method", ["create", "copytruncate"])
def test_real_logrotate_with_compression_loses_and_repeats_nothing(
    tmp_path: Path, mode: str, method: str
) -> None:
    """Ten forced rotations by logrotate (rotate 3, compress, delaycompress) between appends: exact lines."""
    logs = LogDir(tmp_path / "logs")
    logs.create()
    config = tmp_path / "logrotate.conf"
    config.write_text(
        f"{logs.current} {{\n  rotate 3\n  {method}\n  compress\n  delaycompress\n  missingok\n}}\n"
    )
    with closing(Harness(stream_config(logs.dir), ingest_config(mode), watch=True)) as h:
        expected: list[bytes] = []
        for round_ in range(10):
            expected += logs.append(40)
            if round_ % 2:
                h.wait_for(len(expected))  # sometimes read up to date before the rotation
            logrotate(config, tmp_path / "logrotate.state")
            if method == "create" and logs.current.stat().st_size == 0:
                logs.append_raw(b"timestamp,a\n")  # logrotate made an empty file; the logger starts it
        expected += logs.append(10)
        h.wait_for(len(expected))
        h.settle(0.3)
        assert h.lines == expected
        assert any(p.name.endswith(".gz") for p in logs.dir.iterdir())


WRITER = r"""
import os, sys, time
path, o_append, stop = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if o_append else 0), 0o644)
os.lseek(fd, 0, os.SEEK_END)
n = 0
PAD = "0" * 150  # a longer copy: logrotate takes longer to write it
while not os.path.exists(stop):
    os.write(fd, "".join(f"{k},{k}{PAD}\n" for k in range(n, n + 50)).encode())
    n += 50
    time.sleep(0.001)
os.close(fd)
"""


HOG = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end:\n    pass\n"


def complete_lines_on_disk(directory: Path) -> list[bytes]:
    """Every complete data line in the stream's files (copies and live), in the order written."""
    lines = []
    for path in directory.iterdir():
        data = path.read_bytes()
        for line in data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]:
            line = line.lstrip(b"\x00")
            if line and line != b"timestamp,a":
                lines.append(line)
    return sorted(lines, key=lambda line: int(line.split(b",")[0]))


@pytest.mark.parametrize("mode", ["inotify", "poll"])
@pytest.mark.parametrize("o_append", [True, False], ids=["o_append", "no_o_append"])
def test_real_logrotate_copytruncate_under_a_busy_writer_repeats_nothing(
    tmp_path: Path, mode: str, o_append: bool
) -> None:
    """Logrotate copytruncates every ~0.15 s while a writer appends ~20,000 lines/s (with or
    without O_APPEND): every complete line left on disk is returned once, in order.

    (logrotate itself loses what is written between its copy and its truncation: those lines
    are in no file, so they are not expected.)
    """
    logs = LogDir(tmp_path / "logs")
    logs.create()
    config = tmp_path / "logrotate.conf"
    config.write_text(f"{logs.current} {{\n  rotate 100\n  copytruncate\n  nocompress\n  missingok\n}}\n")
    h = Harness(stream_config(logs.dir), ingest_config(mode), watch=True)
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(logs.current), "1" if o_append else "0", str(stop)]
    )
    # Load: busy processes on every CPU, and logrotate at the lowest priority, so that it is
    # often preempted between creating the copy and filling it, as on a busy controller.
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 2)]
    try:
        for _ in range(10):
            h.settle(0.15)
            logrotate(config, tmp_path / "logrotate.state", nice=19)
        stop.touch()
        assert writer.wait(timeout=60) == 0
        h.drain()
        h.settle(0.8)  # past release_after_s: pending copies are judged, quiet tails settled
        h.drain()
    finally:
        for process in [writer, *hogs]:
            if process.poll() is None:
                process.kill()
                process.wait()
        h.close()
    expected = complete_lines_on_disk(logs.dir)
    assert len([p for p in logs.dir.iterdir() if p.name != logs.name]) == 10
    assert len(expected) > 10_000
    assert h.duplicates() == []
    assert h.lines == expected
    assert {r.reason for r in h.rejected} <= {"unterminated"}  # a copy cut inside a write
