"""Rotation identity that cannot be fooled: copies seen while they are written, NUL holes, prefixes.

copytruncate is what most industrial loggers get rotated with, and many of them
write without O_APPEND, so the truncated file (and every later copy) starts with
a hole of NUL bytes. Each line must still come out exactly once, whenever the
follower looks and whether or not it restarts or is killed in between.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from contextlib import closing
from pathlib import Path

import pytest

from agent.ingest.copies import Ghost
from agent.ingest.discovery import Candidate
from agent.ingest.identity import ContentMark, digest
from agent.ingest.parking import ParkedFiles, unchanged
from agent.ingest.rotation import RotationTracker
from agent.ingest.tracked import TrackedFile
from tests.strategies import HEADER, Harness, LogDir, ingest_config, stream_config


def logs_at(tmp_path: Path, *, o_append: bool = True) -> LogDir:
    log = LogDir(tmp_path / "logs", o_append=o_append)
    log.create()
    return log


def finish(h: Harness) -> None:
    """Read until dry, then past release_after_s (when pending copies are judged), and once more."""
    h.drain()
    h.settle(0.5)
    h.drain()


def assert_each_line_once(h: Harness, expected: list[bytes]) -> None:
    """After `finish`, the lines read are exactly `expected`: none twice, none lost, in order."""
    finish(h)
    assert h.duplicates() == []
    assert h.lines == expected


@pytest.mark.parametrize("then", ["read", "restart", "kill"])
@pytest.mark.parametrize("seen", ["empty", "partial", "full"])
@pytest.mark.parametrize("o_append", [True, False], ids=["o_append", "no_o_append"])
@pytest.mark.parametrize("lines", [30, 2000], ids=["under_1k", "over_1k"])
def test_a_copytruncate_copy_seen_while_it_is_written_is_read_once(
    tmp_path: Path, seen: str, then: str, o_append: bool, lines: int
) -> None:
    """``: > f.1``, the follower lists it, ``cat f > f.1``, ``truncate -s 0 f``: no line twice, none lost.

    The copy is seen empty, partly written (shorter than the 1 KiB head fingerprint) or
    whole; after the truncation the follower reads on, restarts, or is killed.
    """
    logs = logs_at(tmp_path, o_append=o_append)
    with closing(Harness(stream_config(logs.dir), ingest_config("poll"))) as h:
        expected = logs.append(lines)
        h.drain()
        expected += logs.append(lines // 4 + 1)  # written before the copy, unread

        def observe(step: str) -> None:
            if step == seen:
                h.read()

        logs.copy_in_steps(logs.rotated(1), observe)
        logs.truncate(0)
        if then == "restart":
            h.restart()
        elif then == "kill":
            h.read(save=False)
            h.kill()
        expected += logs.append(40)  # the logger goes on (at its old offset without O_APPEND)
        assert_each_line_once(h, expected)
        logs.close_writer()


@pytest.mark.parametrize("then", ["live", "restart", "kill"])
def test_a_position_just_after_a_nul_hole_never_resumes_inside_a_later_longer_hole(
    tmp_path: Path, then: str
) -> None:
    """Saved just after the hole a stale writer left; a second copytruncate makes a longer hole:
    the lines between (now in the copy) are read once, and so is the live file's new content.
    """
    logs = logs_at(tmp_path, o_append=False)
    with closing(Harness(stream_config(logs.dir), ingest_config("poll"))) as h:
        expected = logs.append(100)
        h.drain()
        logs.copytruncate()
        (line,) = logs.lines(1)
        logs.append_raw(line[:3])  # the next line half written at the stale offset, after a hole
        h.drain()  # skips the hole, stops before the partial line: the position is just after the hole
        if then != "live":
            h.follower.close()
        logs.append_raw(line[3:] + b"\n")
        expected += [line, *logs.append(2000)]
        logs.copytruncate()
        expected += logs.append(50)  # after a longer hole
        if then == "restart":
            h.follower = h._new()
        elif then == "kill":
            h.kill()
        assert_each_line_once(h, expected)
        logs.close_writer()


def test_after_a_restart_a_nul_headed_live_file_is_read_while_it_grows(tmp_path: Path) -> None:
    """A stale writer, one copytruncate while running and one while stopped: the copy and the live
    file both start with a hole longer than the head fingerprint. After the restart the live file
    is not taken for a copy of the other one (it would not be read while it grows).
    """
    logs = logs_at(tmp_path, o_append=False)
    with closing(Harness(stream_config(logs.dir), ingest_config("poll", release_after_s=3600.0))) as h:
        expected = logs.append(200)
        h.drain()
        logs.copytruncate()
        expected += logs.append(200)  # after a hole longer than the head fingerprint
        h.drain()
        h.follower.close()
        expected += logs.append(50)
        logs.copytruncate()  # while the agent is stopped
        expected += logs.append(100)
        h.kill()
        for _ in range(20):
            expected += logs.append(200)
            h.read()
            assert len(h.lines) == len(expected), "lines held back while the live file grows"
        assert h.lines == expected
        logs.close_writer()


@pytest.mark.parametrize("cut", [0, 5, 100, 201])
def test_a_copy_that_is_a_prefix_of_the_live_head_is_not_read(tmp_path: Path, cut: int) -> None:
    """A copy of the first bytes of the live file (shorter than its head fingerprint, possibly
    ending inside a line) holds nothing new: it is neither read nor quarantined.
    """
    logs = logs_at(tmp_path)
    with closing(Harness(stream_config(logs.dir), ingest_config("poll"))) as h:
        expected = logs.append(60)
        h.drain()
        head = logs.current.read_bytes()
        assert cut < len(head) < 1024
        logs.rotated(1).write_bytes(head[:cut])
        h.read()
        expected += logs.append(5)
        finish(h)
        assert h.lines == expected
        assert h.rejected == []


def test_a_ghost_of_only_the_header_saved_without_it_is_not_claimed_by_a_copy_with_lines(
    tmp_path: Path,
) -> None:
    """Found by the follower model: a file skipped as a copy before its source's header was read is
    parked holding only the header, saved without it (``data_start`` 0); logrotate deletes it and
    copies the live file (header + lines already read) into its reused inode. The ghost made of
    the parked file as it changed was claimed by that copy, which read on after the header: its
    lines came out twice. A ghost of only the stream's header identifies nothing (as a saved
    position of it does not): the copy is judged against the live file, like any other.
    """
    head = HEADER + b"\n"
    header_only = ContentMark(len(head), 0, len(head), digest(head), len(head), digest(head))
    copy = tmp_path / "arm1.csv.1"
    copy.write_bytes(head + b"1,1\n2,2\n")
    counters: defaultdict[str, int] = defaultdict(int)
    tracker = RotationTracker({}, csv=True, release_after_s=1e-6, counters=counters)
    tracker.stream_header = lambda: HEADER
    tracker.add_ghost(Ghost(header_only, None, 0.0, 0, head))
    status = copy.stat()
    fd = os.open(copy, os.O_RDONLY)
    try:
        f = TrackedFile(fd, status.st_dev, status.st_ino, str(copy), 1, True, 0.0)
        tracker.classify(f, status.st_size, 0.0)
        assert counters["copies_claimed"] == 0
        assert f.offset == 0  # read from its start (nothing known it could be a copy of)
    finally:
        os.close(fd)


def test_a_file_parked_again_after_a_restart_is_the_source_of_a_copy_shorter_than_its_head(
    tmp_path: Path,
) -> None:
    """Found by the bounded follower model: the live file (three lines, read) was parked to make
    room and saved so; after a kill it was listed unchanged and parked again, but its consumed
    head is not saved, so the copy logrotate was making of it (one line so far) matched no
    source and was read as new: its line came out twice. Parked again, its head is read back.
    """
    live = tmp_path / "arm1.csv"
    live.write_bytes(b"1,1\n2,2\n3,3\n")
    status = live.stat()
    fd = os.open(live, os.O_RDONLY)
    f = TrackedFile(fd, status.st_dev, status.st_ino, str(live), 0, False, 0.0)
    f.consume_to(status.st_size, 1 << 16)
    f.last_size, f.last_mtime = status.st_size, status.st_mtime_ns
    before = ParkedFiles(defaultdict(int))
    before.park(f)  # closes fd
    ident = (status.st_dev, status.st_ino)
    saved = json.loads(json.dumps(before.entries[ident]))  # what the checkpoint holds

    after = ParkedFiles(defaultdict(int))  # a new follower, restored
    listed = Candidate(str(live), status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, 0)
    assert unchanged(saved, listed)
    after.restore(listed, saved)
    assert after.source_for(0, b"1,1\n", 1) == ident
