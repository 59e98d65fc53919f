"""The follower against what a file system can put in a log file's place, and against very many files.

Real FIFOs and device nodes (``mknod`` needs root, as CI runs), real directories of many
files; each read must return at once, say why a path is refused (once, not at every scan),
and bound the descriptors it holds.
"""

from __future__ import annotations

import json
import os
import resource
import stat
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import structlog

from agent.ingest import discovery as discovery_module
from agent.ingest import limits
from agent.ingest.discovery import Candidate
from tests.strategies import HEADER, Harness, LogDir, ingest_config, stream_config


@pytest.fixture
def logs(tmp_path: Path) -> LogDir:
    log = LogDir(tmp_path / "logs")
    log.create()
    return log


def fifo(path: Path) -> None:
    os.mkfifo(path)


def device_symlink(path: Path) -> None:
    path.symlink_to("/dev/null")


def device_node(path: Path) -> None:
    os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # the null device, a node of our own


NOT_REGULAR: dict[str, Callable[[Path], None]] = {
    "fifo": fifo,
    "device-symlink": device_symlink,
    "device-node": device_node,
}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("make", NOT_REGULAR.values(), ids=NOT_REGULAR.keys())
def test_a_followed_file_replaced_by_a_non_regular_file_is_refused_once_and_reported_while_it_stands(
    logs: LogDir, make: Callable[[Path], None]
) -> None:
    """The followed file becomes a FIFO / device node while running: the old file is drained, every read
    returns at once, the refusal is counted and logged once over many scans and is the stream's reason;
    a regular file back in its place is read and the refusal cleared.
    """
    with closing(Harness(stream_config(logs.dir), ingest_config("poll"))) as h:
        expected = logs.append(3)
        h.drain()
        logs.close_writer()
        expected += logs.append(2)
        logs.current.rename(logs.dir / "old-arm1")  # leaves the stream's names: drained, then released
        make(logs.current)
        with structlog.testing.capture_logs() as captured:
            for _ in range(8):  # many scans (rescan_interval_s=0.05): each returns at once
                h.settle(0.02)
        assert h.lines == expected
        refused = [e for e in captured if e["event"] == "file_refused"]
        assert [(e["path"], e["reason"]) for e in refused] == [(str(logs.current), "not_regular_file")]
        assert 1 == h.follower.counters["refused_not_regular_file"]
        assert h.follower.stats()["files_refused"] == 1
        reason = h.follower.refused()
        assert reason is not None
        assert f"{logs.current} (not_regular_file)" in reason
        logs.current.unlink()
        logs.create()
        expected += logs.append(4)
        with structlog.testing.capture_logs() as captured:
            h.wait_for(len(expected))
        assert h.lines == expected
        assert h.follower.refused() is None
        assert ["file_refusal_cleared"] == [e["event"] for e in captured if "refus" in e["event"]]


def test_a_fifo_in_a_saved_files_place_at_restart_is_refused_and_never_opened_blocking(logs: LogDir) -> None:
    """Stopped, the followed file is replaced by a FIFO (nobody writes it): the restored follower's
    reads return at once, and it reports the refusal; the other names go on being read.
    """
    h = Harness(stream_config(logs.dir, patterns=("arm1.csv", "arm2.csv")), ingest_config("poll"))
    try:
        expected = logs.append(3)
        h.drain()
        h.restart()
        h.follower.close()
        logs.close_writer()
        logs.current.unlink()
        os.mkfifo(logs.current)
        other = LogDir(logs.dir, "arm2.csv")
        other.create()
        expected += other.append(2)
        h.follower = h._new()
        h.settle(0.3)
        assert h.lines == expected
        reason = h.follower.refused()
        assert reason is not None
        assert "arm1.csv (not_regular_file)" in reason
    finally:
        h.close()


def test_a_file_that_vanishes_between_listing_and_open_is_counted_and_not_a_fault(
    logs: LogDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotation deletes a listed file before it is opened: counted as vanished_before_open, no refusal,
    no error; the next file is read.
    """
    h = Harness(stream_config(logs.dir, patterns=("*.csv",)), ingest_config("poll"))
    try:
        expected = logs.append(2)
        h.drain()
        doomed = LogDir(logs.dir, "doomed.csv")
        doomed.create()
        doomed.append(2)
        doomed.close_writer()
        real_open = discovery_module.open_listed

        def delete_then_open(
            directory: str, patterns: tuple[str, ...], c: Candidate, opener: discovery_module.Opener
        ) -> tuple[int, os.stat_result, Candidate] | None:
            if c.path == str(doomed.current):
                doomed.current.unlink()  # listed, then gone before its open
            return real_open(directory, patterns, c, opener)

        monkeypatch.setattr(discovery_module, "open_listed", delete_then_open)
        h.settle(0.2)
        monkeypatch.undo()
        expected += logs.append(2)
        h.wait_for(len(expected))
        assert h.lines == expected
        assert h.follower.counters["vanished_before_open"] >= 1
        assert h.follower.refused() is None
    finally:
        h.close()


class TestOpenFilesBounded:
    @pytest.fixture
    def many(self, tmp_path: Path) -> tuple[Path, list[bytes]]:
        """60 small CSV files, oldest first by name and mtime, each with its own lines."""
        directory = tmp_path / "many"
        directory.mkdir()
        expected: list[bytes] = []
        for i in range(60):
            rows = [f"{i * 10 + k},{i}".encode() for k in range(2)]
            expected += rows
            path = directory / f"f{i:03d}.csv"
            path.write_bytes(HEADER + b"\n" + b"".join(r + b"\n" for r in rows))
            os.utime(path, ns=(i * 1_000_000_000, i * 1_000_000_000))
        return directory, expected

    def test_a_directory_of_more_files_than_the_bound_is_read_in_order_within_the_bound(
        self, many: tuple[Path, list[bytes]]
    ) -> None:
        """60 files, max_open_files=8: every line once, oldest file first, never more than 8 held open;
        the wait is logged once; a restart opens nothing again and reads nothing twice.
        """
        directory, expected = many
        h = Harness(stream_config(directory, patterns=("*.csv",)), ingest_config("poll", max_open_files=8))
        try:
            before = open_fds()
            peak = 0
            with structlog.testing.capture_logs() as captured:
                for _ in range(200):
                    h.read()
                    peak = max(peak, h.follower.stats()["open_files"], open_fds() - before)
                    if len(h.lines) >= len(expected) and not h.follower.stats()["files_deferred"]:
                        break
            assert h.lines == expected
            assert peak <= 8
            events = [e["event"] for e in captured]
            assert 1 == events.count("open_files_bound_reached")
            assert 1 == events.count("open_files_backlog_opened")
            h.restart()
            h.settle(0.2)
            assert h.lines == expected
            assert h.follower.stats()["open_files"] <= 8
            assert h.follower.stats()["parked_files"] >= 52
        finally:
            h.close()

    def test_a_parked_file_that_grows_is_read_on_from_where_it_was(
        self, many: tuple[Path, list[bytes]]
    ) -> None:
        """A file parked (closed, read to its end) gets more lines: they are read once, after the rest."""
        directory, expected = many
        h = Harness(stream_config(directory, patterns=("*.csv",)), ingest_config("poll", max_open_files=8))
        try:
            h.wait_for(len(expected))
            h.settle(0.2)
            with (directory / "f000.csv").open("ab") as f:
                f.write(b"9999,0\n")
            h.wait_for(len(expected) + 1)
            h.settle(0.2)
            assert h.lines == [*expected, b"9999,0"]
            assert h.follower.counters["files_unparked"] >= 1
        finally:
            h.close()

    @pytest.mark.parametrize("looked", ["after", "empty", "partial", "full", "truncated"])
    @pytest.mark.parametrize("grown", [False, True], ids=["as_parked", "grown_while_parked"])
    def test_a_parked_live_file_copytruncated_has_every_line_read_once(
        self, many: tuple[Path, list[bytes]], looked: str, grown: bool
    ) -> None:
        """A live file parked (closed under the bound) is copytruncated, the follower looking while the
        copy is empty, partly or fully written, just truncated, or only after: the copy resumes where
        the parked file was, nothing is read twice, the lines written after it are read once.
        """
        directory, expected = many
        h = Harness(stream_config(directory, patterns=("*.csv",)), ingest_config("poll", max_open_files=8))
        try:
            h.wait_for(len(expected))
            live = LogDir(directory, "f000.csv")
            live.seq = 10_000  # lines of its own, unlike the fixture's
            st = live.current.stat()
            assert (st.st_dev, st.st_ino) not in h.follower.open_identities()  # parked
            if grown:
                expected += live.append(2)  # not read yet when the copy is made
            live.copytruncate(keep=1, observe=lambda step: h.read() if step == looked else None)
            expected += live.append(2)
            h.wait_for(len(expected))
            h.settle(0.1)
            assert not h.duplicates()
            assert h.lines == expected
        finally:
            h.close()


def test_a_rotated_file_read_to_its_end_is_closed(logs: LogDir) -> None:
    """arm1.csv.1 read to its end and unchanged for release_after_s holds no descriptor; nothing is lost
    or read twice, and a restart keeps it closed.
    """
    with closing(Harness(stream_config(logs.dir), ingest_config("poll", release_after_s=0.1))) as h:
        expected = logs.append(3)
        logs.rotate_rename()
        for restart in (False, True):
            if restart:
                h.restart()
            expected += logs.append(2)
            h.wait_for(len(expected))
            h.settle(0.3)
            assert h.lines == expected
            assert (1, 1) == (h.follower.stats()["open_files"], h.follower.stats()["parked_files"])


WITHOUT_DAC_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
"""Root without the capabilities that let it read any file: file modes bind it as they bind the unit."""

FOLLOW_ONCE = """
import json, sys, threading
from pathlib import Path
from agent.ingest import StreamFollower
from tests.strategies import ingest_config, stream_config
stream = stream_config(Path(sys.argv[1]), patterns=("*.csv",))
follower = StreamFollower(stream, ingest_config(), threading.Event())
lines = sum(block.data.count(b"\\n") for block in follower.read(1 << 20))
print(json.dumps({"lines": lines, "refused": follower.refused(), "counters": follower.counters}))
"""


def test_an_unreadable_file_and_a_dangling_symlink_are_refused_with_their_reasons_and_the_rest_is_read(
    tmp_path: Path,
) -> None:
    """A mode-000 file (file modes binding, as for the unit's user) and a symlink to nothing: each is
    refused with its reason and counted; the readable file beside them is read.
    """
    good = LogDir(tmp_path, "good.csv")
    good.create()
    good.append(3)
    locked = tmp_path / "locked.csv"
    locked.write_bytes(HEADER + b"\n1,1\n")
    locked.chmod(0o000)
    (tmp_path / "gone.csv").symlink_to(tmp_path / "nowhere.csv")
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [*WITHOUT_DAC_OVERRIDE, sys.executable, "-c", FOLLOW_ONCE, str(tmp_path)],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    seen = json.loads(result.stdout.splitlines()[-1])
    assert 3 == seen["lines"]
    assert f"{locked} (permission_denied)" in seen["refused"]
    assert f"{tmp_path / 'gone.csv'} (dangling_symlink)" in seen["refused"]
    assert 1 == seen["counters"]["refused_permission_denied"]
    assert 1 == seen["counters"]["refused_dangling_symlink"]


def test_an_open_file_limit_below_what_the_streams_may_hold_is_said_at_start() -> None:
    """Under a soft RLIMIT_NOFILE of 512, eight streams at the default bound (256) would not fit: the
    warning names the limit and what is needed; under a limit that leaves room nothing is said.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
        with structlog.testing.capture_logs() as captured:
            limits.warn_if_short(8, 256)
        assert [(e["event"], e["limit"], e["needed"]) for e in captured] == [
            ("open_file_limit_low", 512, 8 * 256 + limits.RESERVE)
        ]
        resource.setrlimit(resource.RLIMIT_NOFILE, (8 * 256 + limits.RESERVE, hard))  # just enough
        assert limits.descriptor_shortfall(8, 256) is None
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
