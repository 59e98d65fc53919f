"""The follower against real files: the rotation matrix (docs/design.md, guarantee 1), inotify and poll."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from agent.ingest import StreamFollower
from agent.ingest import discovery as discovery_module
from agent.ingest.discovery import Candidate
from tests.strategies import HEADER, Harness, LogDir, ingest_config, stream_config


@pytest.fixture(params=["inotify", "poll"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def logs(tmp_path: Path) -> LogDir:
    log = LogDir(tmp_path / "logs")
    log.create()
    return log


@pytest.fixture
def harness(logs: LogDir, mode: str) -> Iterator[Harness]:
    h = Harness(stream_config(logs.dir), ingest_config(mode), watch=True)
    yield h
    h.close()


def read_then_stop(logs: LogDir, harness: Harness, n: int) -> list[bytes]:
    """`n` lines written and read, then the follower stopped (its state saved): the lines."""
    expected = logs.append(n)
    harness.wait_for(n)
    harness.follower.close()
    return expected


def assert_reads(harness: Harness, expected: list[bytes], settle_s: float = 0.2) -> None:
    """`expected` arrives, and `settle_s` later nothing else has: no line lost, none repeated."""
    harness.wait_for(len(expected))
    harness.settle(settle_s)
    assert harness.lines == expected


def test_appended_lines_arrive_once_in_order(logs: LogDir, harness: Harness) -> None:
    """Lines appended in several writes come out once each, in order, without the header."""
    expected = logs.append(5) + logs.append(1) + logs.append(30)
    assert_reads(harness, expected)


def test_partial_line_across_restart_yields_exactly_one_record(logs: LogDir, harness: Harness) -> None:
    """A line written in two halves around a restart comes out once, whole (Fluent Bit's test)."""
    first = logs.append(2)
    logs.append_raw(b"77,partial")
    harness.wait_for(2)
    harness.settle(0.15)
    assert harness.lines == first
    harness.restart()
    logs.append_raw(b" line\n")
    harness.wait_for(3)
    harness.settle(0.15)
    assert harness.lines == [*first, b"77,partial line"]


def test_partial_line_across_kill_yields_exactly_one_record(logs: LogDir, harness: Harness) -> None:
    """The same after a crash: the saved position is before the partial line."""
    logs.append_raw(b"5,half")
    harness.settle(0.15)
    harness.kill()
    logs.append_raw(b"-done\n")
    harness.wait_for(1)
    harness.settle(0.15)
    assert harness.lines == [b"5,half-done"]


def test_a_rotation_between_the_size_check_and_the_scan_keeps_the_old_files_last_lines_first(
    logs: LogDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's last lines to the old file, its rename and the new file's lines all land while
    a read is between checking the open files and listing the directory: the old file's last lines
    still come first (Fluent Bit-style stress caught this as an occasional reorder).
    """
    with closing(Harness(stream_config(logs.dir), ingest_config("poll"))) as h:
        expected = logs.append(3)
        h.drain()
        real_list = discovery_module.list_candidates
        rotated = False

        def list_after_a_rotation(
            directory: str, patterns: tuple[str, ...], refused: dict[str, str] | None = None
        ) -> list[Candidate]:
            nonlocal rotated, expected
            if not rotated:
                rotated = True
                expected += logs.append(4)  # the old file's last lines, after its size was checked
                logs.rotate_rename()
                expected += logs.append(5)
            return real_list(directory, patterns, refused)

        monkeypatch.setattr(discovery_module, "list_candidates", list_after_a_rotation)
        h.drain()
        assert rotated
        assert h.lines == expected


def test_a_file_hidden_from_one_listing_by_a_rename_is_still_read_before_its_successor(
    logs: LogDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rotations between scans; the first listing misses the middle file (a name listed before
    a rename and stat'ed after it): the follower lists again and reads the files in order.
    """
    with closing(Harness(stream_config(logs.dir), ingest_config("poll"))) as h:
        expected = logs.append(3)
        h.drain()
        expected += logs.append(2)
        logs.rotate_rename()
        expected += logs.append(4)  # the middle file, arm1.csv.1 after the second rotation
        logs.rotate_rename()
        expected += logs.append(5)
        real_list = discovery_module.list_candidates
        hidden = False

        def list_missing_the_middle_file_once(
            directory: str, patterns: tuple[str, ...], refused: dict[str, str] | None = None
        ) -> list[Candidate]:
            nonlocal hidden
            listing = real_list(directory, patterns, refused)
            if not hidden:
                hidden = True
                return [c for c in listing if not c.path.endswith(".csv.1")]
            return listing

        monkeypatch.setattr(discovery_module, "list_candidates", list_missing_the_middle_file_once)
        h.drain()
        assert hidden
        assert h.lines == expected
        assert h.follower.counters["listings_repeated"] >= 1


def test_rename_rotation_drains_the_rotated_file_before_its_successor(logs: LogDir, harness: Harness) -> None:
    """Lines still unread in the renamed file come before the new file's lines."""
    expected = logs.append(3)
    harness.wait_for(3)
    expected += logs.append(4)  # unread when the rotation happens
    logs.rotate_rename()
    expected += logs.append(5)
    assert_reads(harness, expected)


def test_rotations_faster_than_the_poll_lose_nothing(logs: LogDir, harness: Harness) -> None:
    """Several rename rotations between two reads: every segment is read, oldest first."""
    expected: list[bytes] = []
    for _ in range(6):
        expected += logs.append(20)
        logs.rotate_rename()
    expected += logs.append(7)
    assert_reads(harness, expected)


def test_rotation_while_stopped_resumes_the_rotated_file(logs: LogDir, harness: Harness) -> None:
    """Rotated twice while the agent was down: the rest of the old file, then the newer ones."""
    expected = read_then_stop(logs, harness, 4)
    expected += logs.append(3)
    logs.rotate_rename()
    expected += logs.append(2)
    logs.rotate_rename()
    expected += logs.append(6)
    harness.kill()  # starts from the state saved before the rotations
    assert_reads(harness, expected)


@pytest.mark.parametrize("new_size", ["smaller", "same", "larger"])
def test_copytruncate_reads_the_copy_tail_and_the_new_content(
    logs: LogDir, harness: Harness, new_size: str
) -> None:
    """A copytruncate to a smaller, the same or a larger size (Telegraf skips these): no loss, no repeat."""
    expected = logs.append(10)
    harness.wait_for(10)
    expected += logs.append(3)  # written before the copy, unread
    size_before = logs.current.stat().st_size
    logs.copytruncate()
    body = {"smaller": 2, "same": None, "larger": 40}[new_size]
    if body is None:
        # the same number of bytes: a header plus lines padded to the exact old size
        logs.create()
        lines = logs.lines(8)
        raw = b"".join(line + b"\n" for line in lines)
        missing = size_before - len(HEADER) - 1 - len(raw)
        assert missing > 0
        lines[-1] = lines[-1] + b"0" * missing  # "13,13000…": still a unique line
        raw = b"".join(line + b"\n" for line in lines)
        logs.append_raw(raw)
        assert logs.current.stat().st_size == size_before
        expected += lines
    else:
        logs.create()
        expected += logs.append(body)
    assert_reads(harness, expected)


def test_copytruncate_across_restart_reads_new_content_only(logs: LogDir, harness: Harness) -> None:
    """A copytruncate while the agent is down: the copy's unread tail, then the new content, once."""
    expected = read_then_stop(logs, harness, 8)
    expected += logs.append(2)
    logs.copytruncate()
    logs.create()
    expected += logs.append(20)
    harness.kill()
    assert_reads(harness, expected)


def test_stale_writer_nul_bytes_after_copytruncate_are_skipped(logs: LogDir, harness: Harness) -> None:
    """A writer without O_APPEND keeps its offset after copytruncate: the hole of NULs is skipped."""
    expected = logs.append(10)
    harness.wait_for(10)
    position = logs.current.stat().st_size
    logs.copytruncate()
    lines = logs.lines(3)
    with open(logs.current, "r+b") as handle:
        handle.seek(position)  # the stale writer's offset: bytes before it read back as NUL
        handle.write(b"".join(line + b"\n" for line in lines))
    expected += lines
    assert_reads(harness, expected)
    assert all(b"\x00" not in line for line in harness.lines)
    assert harness.follower.stats()["nul_bytes_skipped"] > 0


def test_deleted_file_with_unread_bytes_is_drained(logs: LogDir, harness: Harness) -> None:
    """A file deleted while it still has unread lines is read to its end through the open handle."""
    expected = logs.append(3)
    harness.wait_for(3)
    expected += logs.append(9)
    logs.current.unlink()
    assert_reads(harness, expected, settle_s=0.5)
    assert harness.follower.stats()["open_files"] == 0  # released once drained and quiet


def test_delete_and_recreate_the_same_path_is_reingested(logs: LogDir, harness: Harness) -> None:
    """Delete, then recreate the same name: the new file is read from its start."""
    expected = logs.append(5)
    harness.wait_for(5)
    logs.current.unlink()
    logs.create()
    expected += logs.append(5)
    assert_reads(harness, expected)


def test_inode_reuse_while_stopped_is_new_content(logs: LogDir, harness: Harness) -> None:
    """A new file that got the old file's inode (or its place) is read from 0, not from the old offset."""
    expected = logs.append(30)
    harness.wait_for(30)
    old_inode = logs.current.stat().st_ino
    harness.follower.close()
    logs.current.unlink()
    logs.create()
    expected += logs.append(40)  # longer than before, so the old offset would be inside it
    harness.kill()
    assert_reads(harness, expected)
    # on tmpfs and ext4 the inode is normally recycled at once; either way the content decides
    assert logs.current.stat().st_ino == old_inode or harness.lines == expected


def test_same_inode_rewritten_while_stopped_is_new_content(logs: LogDir, harness: Harness) -> None:
    """Content replaced in place (same inode, larger) while stopped is caught by the offset marker."""
    expected = read_then_stop(logs, harness, 10)
    logs.truncate(0)
    logs.create()
    expected += logs.append(25)
    harness.kill()
    assert_reads(harness, expected)


def test_symlinked_current_file_that_is_re_pointed(tmp_path: Path, mode: str) -> None:
    """A symlink arm1.csv → data/a.csv re-pointed to data/b.csv: the rest of a.csv, then b.csv."""
    data = LogDir(tmp_path / "data", name="a.csv")
    data.create()
    logs = tmp_path / "logs"
    logs.mkdir()
    link = logs / "arm1.csv"
    link.symlink_to(data.current)
    with closing(Harness(stream_config(logs), ingest_config(mode, poll_interval_s=0.05), watch=True)) as h:
        expected = data.append(4)
        h.wait_for(4)
        expected += data.append(2)
        b = tmp_path / "data" / "b.csv"
        data.create(b)
        expected += data.append(3, b)
        tmp = logs / "arm1.csv.tmp"
        tmp.symlink_to(b)
        os.replace(tmp, link)
        h.wait_for(len(expected))
        h.settle(0.2)
        assert h.lines == expected


def test_over_long_lines_are_rejected_and_reading_goes_on(tmp_path: Path, mode: str) -> None:
    """A line over max_line_bytes is refused as too_long (also one still without newline); the rest flows."""
    logs = LogDir(tmp_path / "logs")
    logs.create()
    with closing(Harness(stream_config(logs.dir), ingest_config(mode, max_line_bytes=100), watch=True)) as h:
        expected = logs.append(2)
        logs.append_raw(b"9," + b"9" * 500 + b"\n")
        expected += logs.append(2)
        h.wait_for(4)
        logs.append_raw(b"8," + b"8" * 300)  # too long already, newline not yet written
        h.settle(0.2)
        logs.append_raw(b"88888\n")
        expected += logs.append(3)
        h.wait_for(7)
        h.settle(0.2)
        assert h.lines == expected
        assert [r.reason for r in h.rejected] == ["too_long", "too_long"]
        assert h.rejected[0].length == 502
        assert h.rejected[0].raw.startswith(b"9,999")


def test_crlf_and_non_utf8_lines_pass_through_unchanged(logs: LogDir, harness: Harness) -> None:
    """The follower hands bytes on as written: CRLF endings and invalid UTF-8 are the parser's call."""
    logs.append_raw(b"1,1\r\n2,\xff\xfe\r\n3,3\n")
    harness.wait_for(3)
    assert harness.lines == [b"1,1", b"2,\xff\xfe", b"3,3"]
    assert b"".join(b.data for b in harness.blocks) == b"1,1\r\n2,\xff\xfe\r\n3,3\n"


def test_empty_and_tiny_files_and_a_header_that_arrives_late(tmp_path: Path, mode: str) -> None:
    """Files below the 1 KiB fingerprint size, an empty file, and a header written in pieces."""
    logs = LogDir(tmp_path / "logs")
    logs.current.write_bytes(b"")
    with closing(Harness(stream_config(logs.dir), ingest_config(mode), watch=True)) as h:
        h.settle(0.1)
        logs.append_raw(b"timest")
        h.settle(0.1)
        logs.append_raw(b"amp,a\n")
        expected = logs.append(1)
        h.wait_for(1)
        h.restart()
        expected += logs.append(1)
        h.wait_for(2)
        h.settle(0.15)
        assert h.lines == expected


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "wrong_version"])
def test_damaged_state_rereads_everything_without_loss(logs: LogDir, harness: Harness, damage: str) -> None:
    """A lost, zero-byte or corrupt checkpoint never stops the follower: it reads again from the start."""
    first = logs.append(5)
    harness.wait_for(5)
    harness.follower.close()
    harness.saved = {"missing": None, "empty": {}, "garbage": {"v": 1, "files": [{"dev": "x"}]}}.get(
        damage, {"v": 99}
    )
    more = logs.append(3)
    harness.kill()
    harness.wait_for(len(first) * 2 + len(more))
    assert sorted(set(harness.lines)) == sorted(first + more)


def test_compressed_rotations_are_ignored_and_rotated_names_belong(logs: LogDir, harness: Harness) -> None:
    """Rotated names (arm1.csv.1, arm1.csv-20261126) belong to the stream; arm1.csv.2.gz does not."""
    (logs.dir / "arm1.csv.2.gz").write_bytes(b"\x1f\x8b" + b"junk\n" * 10)
    (logs.dir / "other.log").write_bytes(b"not,ours\n")
    expected = logs.append(2)
    harness.wait_for(2)
    os.replace(logs.current, logs.dir / "arm1.csv-20261126")
    logs.create()
    expected += logs.append(2)
    harness.wait_for(4)
    harness.settle(0.2)
    assert harness.lines == expected


def test_new_files_matching_the_patterns_are_picked_up(tmp_path: Path, mode: str) -> None:
    """A second file appearing later under a glob pattern is read from its start."""
    a = LogDir(tmp_path / "logs", name="a.csv")
    a.create()
    h = Harness(stream_config(a.dir, patterns=("*.csv",)), ingest_config(mode), watch=True)
    try:
        expected = a.append(3)
        h.wait_for(3)
        b = a.dir / "b.csv"
        a.create(b)
        expected += a.append(4, b)
        h.wait_for(7)
        h.settle(0.2)
        assert sorted(h.lines) == sorted(expected)
        assert not h.duplicates()
    finally:
        h.close()


def test_plain_copy_of_a_live_file_is_not_read_twice(logs: LogDir, harness: Harness) -> None:
    """A plain copy (cp arm1.csv arm1.csv.1, no truncate) is not read: its lines came from the original."""
    expected = logs.append(50)
    harness.wait_for(50)
    shutil.copyfile(logs.current, logs.rotated(1))
    expected += logs.append(5)
    assert_reads(harness, expected, settle_s=0.6)  # past release_after_s, when the copy is judged
    assert harness.follower.stats()["copies_skipped"] == 1


def test_unterminated_last_line_of_a_rotated_file_is_rejected_once_quiet(
    logs: LogDir, harness: Harness
) -> None:
    """A rotated file ending without newline does not hold its successor, and its tail is quarantined."""
    expected = logs.append(2)
    logs.append_raw(b"3,cut-off")
    logs.rotate_rename()
    expected += logs.append(2)
    harness.wait_for(4)
    harness.settle(0.6)
    assert harness.lines == expected
    assert [(r.reason, r.raw) for r in harness.rejected] == [("unterminated", b"3,cut-off")]


@contextmanager
def following(logs: LogDir, coalesce_ms: float = 2.0) -> Iterator[tuple[StreamFollower, threading.Event]]:
    """A started follower of `logs` on inotify and the event it sets when there is something to read."""
    wakeup = threading.Event()
    follower = StreamFollower(
        stream_config(logs.dir), ingest_config("inotify", coalesce_ms=coalesce_ms), wakeup
    )
    follower.restore(None)
    follower.start()
    try:
        yield follower, wakeup
    finally:
        follower.close()


def test_inotify_wakes_the_reader_without_polling(logs: LogDir, tmp_path: Path) -> None:
    """With a 30 s poll, an append still sets the wakeup within a second (inotify, coalesced)."""
    with following(logs, coalesce_ms=5.0) as (follower, wakeup):
        assert follower.watch_mode == "inotify"
        follower.read(1 << 20)
        wakeup.clear()
        started = time.monotonic()
        for _ in range(200):
            logs.append(1)
        assert wakeup.wait(1.0)
        assert time.monotonic() - started < 1.0
        got = b"".join(b.data for b in follower.read(1 << 20))
        assert got.count(b"\n") == 200


def test_a_reader_that_needs_more_bytes_is_not_woken_for_fewer(logs: LogDir) -> None:
    """wake_after(n): appends short of n bytes wake nobody; the append that reaches n does, at once."""
    with following(logs) as (follower, wakeup):
        follower.read(1 << 20)
        follower.wake_after(1000)
        wakeup.clear()
        written = 0
        while written + 40 < 1000:
            written += len(b"".join(x + b"\n" for x in logs.append(1)))
            time.sleep(0.005)
        assert not wakeup.wait(0.1), "woken before enough bytes arrived"
        started = time.monotonic()
        logs.append_raw(b"9" * (1000 - written) + b"\n")
        assert wakeup.wait(1.0)
        assert time.monotonic() - started < 0.1
        assert follower.stats()["wakeups_gated"] > 0


@contextmanager
def gated_following(logs: LogDir, need: int) -> Iterator[threading.Event]:
    """`following`, two lines read, then gated: the reader asks to be woken after `need` more bytes."""
    with following(logs) as (follower, wakeup):
        logs.append(2)
        follower.read(1 << 20)
        follower.wake_after(need)
        wakeup.clear()
        yield wakeup


def test_a_rotation_amid_appends_wakes_a_gated_reader(logs: LogDir) -> None:
    """While appends keep coming the gated watcher follows the file's size; a rotation still wakes."""
    with gated_following(logs, need=1 << 20) as wakeup:
        for _ in range(20):
            logs.append(1)
            time.sleep(0.003)
        assert not wakeup.is_set()
        logs.rotate_rename()
        assert wakeup.wait(1.0)


def test_after_appends_pause_a_gated_reader_is_still_woken_by_enough_bytes(logs: LogDir) -> None:
    """Appends, a pause longer than the watcher follows sizes for, then enough bytes: woken."""
    with gated_following(logs, need=2000) as wakeup:
        for _ in range(20):
            logs.append(1)
            time.sleep(0.003)
        time.sleep(0.1)  # quiet for many coalesce periods: write events are switched back on
        assert not wakeup.is_set()
        logs.append_raw(b"9" * 2000 + b"\n")
        assert wakeup.wait(1.0)


def test_a_new_file_wakes_a_gated_reader(logs: LogDir) -> None:
    """Directory changes are never gated: a rotation wakes the reader even while it waits for bytes."""
    with gated_following(logs, need=1 << 20) as wakeup:
        logs.rotate_rename()
        assert wakeup.wait(1.0)


def test_state_is_json_and_restores_across_processes(logs: LogDir, harness: Harness) -> None:
    """The state survives a JSON round trip (as in SQLite) and resumes at the same line."""
    logs.append(3)
    harness.wait_for(3)
    text = json.dumps(harness.follower.state())
    harness.follower.close()
    harness.saved = json.loads(text)
    more = logs.append(2)
    harness.kill()
    harness.wait_for(5)
    assert harness.lines[3:] == more


def test_slow_catch_up_of_a_quiet_rotated_file_never_skips_lines(tmp_path: Path) -> None:
    """Small read budgets with pauses past release_after_s: a rotated file's unread lines all come."""
    logs = LogDir(tmp_path / "logs")
    logs.create()
    expected = logs.append(300)
    logs.rotate_rename()
    expected += logs.append(5)
    with closing(
        Harness(stream_config(logs.dir), ingest_config("poll", release_after_s=0.05, max_line_bytes=64))
    ) as h:
        for _ in range(400):
            h.read(max_bytes=100)
            time.sleep(0.001 if len(h.lines) % 50 else 0.08)  # now and then longer than release_after_s
            if len(h.lines) == len(expected):
                break
        assert h.lines == expected


def test_a_vanished_file_ending_in_an_over_long_line_is_released(tmp_path: Path) -> None:
    """A deleted file whose last line is too long and never ends is let go once quiet (no fd leak)."""
    logs = LogDir(tmp_path / "logs")
    logs.create()
    expected = logs.append(2)
    logs.append_raw(b"9," + b"9" * 500)
    with closing(
        Harness(stream_config(logs.dir), ingest_config("poll", release_after_s=0.05, max_line_bytes=100))
    ) as h:
        h.read()
        logs.current.unlink()
        h.read()  # sees it gone
        time.sleep(0.1)
        h.read()  # quiet since: released
        assert h.lines == expected
        assert [r.reason for r in h.rejected] == ["too_long"]
        assert h.follower.stats()["open_files"] == 0


def test_auto_mode_degrades_to_polling_when_inotify_cannot_be_set_up(
    logs: LogDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No inotify (e.g. watch limits reached): auto polls and lines still flow."""
    import agent.filewatch.watcher as watcher_module

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(watcher_module, "Inotify", refuse)
    h = Harness(
        stream_config(logs.dir), ingest_config("inotify", watch="auto", poll_interval_s=0.05), watch=True
    )
    try:
        assert h.follower.watch_mode == "poll"
        expected = logs.append(3)
        logs.rotate_rename()
        expected += logs.append(2)
        h.wait_for(5)
        assert h.lines == expected
    finally:
        h.close()


def test_inotify_mode_refuses_to_start_without_inotify(logs: LogDir, monkeypatch: pytest.MonkeyPatch) -> None:
    """Watch = "inotify" is a promise: without inotify the follower says so instead of polling."""
    import agent.filewatch.watcher as watcher_module
    from agent.errors import IngestError

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(24, "too many open files")

    monkeypatch.setattr(watcher_module, "Inotify", refuse)
    follower = StreamFollower(stream_config(logs.dir), ingest_config("inotify"), threading.Event())
    follower.restore(None)
    with pytest.raises(IngestError, match="too many open files"):
        follower.start()
    follower.close()
