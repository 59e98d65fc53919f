"""A FIFO, a symlink or a directory in place of one of the agent's own files never blocks or kills it.

First `agent.ownfiles` itself, on real nodes (``os.mkfifo``, a symlink to ``/dev/zero``, a
zero device node of its own), and the technician CLI's readers (a shelve answer, an alert's
source lines). Then the real agent, with a FIFO planted before its start in place of each
file it keeps in its state directory, model store and control directory, or its log file:
it starts, alerts on an over-current stream, reports running, logs the refusal, and SIGTERM
ends it with exit 0 within 10 s. Every wait is bounded (a blocked read fails the test).
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.ownfiles import NotRegularFileError, move_aside, not_regular, open_own, read_own
from agent.technician.commands import _wait_result
from agent.technician.control import write_atomic
from agent.technician.reports import read_source
from agent.technician.shelving import ShelveResult
from tests.agent_config import agent_config, stream
from tests.agent_runs import AgentRun, agent_cli
from tests.models import write_linear_model
from tests.test_daemon import HEADER, PROFILE, lines
from tests.test_model_store import within


class TestOpenOwn:
    def test_a_regular_file_is_read_as_before(self, tmp_path: Path) -> None:
        """A regular file's bytes come back whole, and capped at max_bytes."""
        path = tmp_path / "skip.json"
        path.write_bytes(b'{"a": 1}')
        assert b'{"a": 1}' == read_own(path)
        assert b'{"a' == read_own(path, 3)

    def test_a_fifo_is_refused_at_once_for_reading_and_writing(self, tmp_path: Path) -> None:
        """A FIFO with no one at the other end: refused as a fifo, neither open waits."""
        path = tmp_path / "fatal.log"
        os.mkfifo(path)
        for flags in (os.O_RDONLY, os.O_WRONLY | os.O_CREAT, os.O_RDWR | os.O_CREAT):
            with pytest.raises(NotRegularFileError) as caught:
                open_own(path, flags)
            assert "fifo" == caught.value.kind

    def test_a_symlink_to_dev_zero_is_refused_not_followed(self, tmp_path: Path) -> None:
        """A symlink (here to a device that never ends) is refused as a symlink."""
        path = tmp_path / "inflight"
        path.symlink_to("/dev/zero")
        with pytest.raises(NotRegularFileError) as caught:
            read_own(path)
        assert "symlink" == caught.value.kind

    def test_a_device_node_is_refused_before_a_byte_is_read(self, tmp_path: Path) -> None:
        """A zero device node of its own (mknod, as root): refused as a character device."""
        path = tmp_path / "skip.json"
        zero_device(path)
        with pytest.raises(NotRegularFileError) as caught:
            read_own(path)
        assert "character device" == caught.value.kind

    def test_a_directory_is_refused_for_reading_and_writing(self, tmp_path: Path) -> None:
        """A directory in a file's place: refused as a directory."""
        path = tmp_path / "health.json"
        path.mkdir()
        for flags in (os.O_RDONLY, os.O_RDWR | os.O_CREAT):
            with pytest.raises(NotRegularFileError) as caught:
                open_own(path, flags)
            assert "directory" == caught.value.kind

    def test_a_missing_file_is_file_not_found(self, tmp_path: Path) -> None:
        """No file: FileNotFoundError, as open raises it (callers treat it as absent)."""
        with pytest.raises(FileNotFoundError):
            read_own(tmp_path / "nothing")

    def test_a_refused_read_is_logged_with_the_path_and_what_was_there(self, tmp_path: Path) -> None:
        """The refusal names the path and "fifo"; with report=False (the CLI) nothing is logged."""
        path = tmp_path / "skip.json"
        os.mkfifo(path)
        with capture_logs() as logs, pytest.raises(NotRegularFileError):
            read_own(path)
        assert [(str(path), "fifo")] == [(e["path"], e["found"]) for e in logs]
        with capture_logs() as quiet, pytest.raises(NotRegularFileError):
            read_own(path, report=False)
        assert [] == quiet


class TestMoveAside:
    def test_a_fifo_is_renamed_to_refused_and_a_regular_file_can_be_made(self, tmp_path: Path) -> None:
        """The FIFO goes to <name>.refused-<time> (logged); the name is then free for a regular file."""
        path = tmp_path / "health.json"
        os.mkfifo(path)
        with capture_logs() as logs:
            moved = move_aside(path, wall=0.0)
        assert moved == tmp_path / "health.json.refused-19700101T000000Z"
        assert stat.S_ISFIFO(moved.lstat().st_mode)
        assert not os.path.lexists(path)
        assert ["moved aside"] == [e["action"] for e in logs]
        os.close(open_own(path, os.O_RDWR | os.O_CREAT))
        assert not_regular(path) is None

    def test_a_second_refusal_in_the_same_second_does_not_overwrite_the_first(self, tmp_path: Path) -> None:
        """Two nodes moved aside at the same time keep distinct names."""
        path = tmp_path / "inflight"
        path.symlink_to("/dev/zero")
        first = move_aside(path, wall=0.0)
        os.mkfifo(path)
        second = move_aside(path, wall=0.0)
        assert first is not None
        assert second is not None
        assert first != second
        assert first.is_symlink()
        assert stat.S_ISFIFO(second.lstat().st_mode)

    def test_a_regular_file_or_nothing_is_left_alone(self, tmp_path: Path) -> None:
        """A regular file is not moved, nor is a missing one an error."""
        path = tmp_path / "skip.json"
        assert move_aside(path) is None
        path.write_text("{}")
        assert move_aside(path) is None
        assert "{}" == path.read_text()


class TestShelveAnswer:
    def test_a_fifo_under_the_answers_name_is_waited_past_then_the_answer_read(self, tmp_path: Path) -> None:
        """The technician CLI waits for results/<id>.json: a FIFO planted there is not read (no answer
        yet, within the wait), and the agent's atomic answer that replaces it is read.
        """
        path = tmp_path / "r1.json"
        os.mkfifo(path)
        assert within(10, lambda: _wait_result(path, 0.2)) is None
        answer = ShelveResult(request_id="r1", action="shelve", ok=True, detail="shelved")
        write_atomic(path, answer.model_dump_json().encode())
        assert answer == within(10, lambda: _wait_result(path, 5.0))


# -- the real agent --------------------------------------------------------------------------------

WRITTEN = (
    "state/fatal.log",
    "state/inflight",
    "state/health.json",
    "state/agent.db",
    "state/agent.db-wal",
    "state/agent.db-shm",
    "state/quarantine.jsonl",
    "state/control/status.json",
)
"""Files the daemon writes in the first seconds of a run: a FIFO there must be gone once it runs."""

READ_AT_START = ("state/skip.json", "state/model-trial.json")
"""Files the daemon only reads at start (it writes them later, atomically, when it must)."""

NOT_YET_READ = ("state/probation.json", "store/.floor.json", "store/.refused.json")
"""Files read only when a candidate model arrives: the agent must come up all the same."""

CONTROL = ("state/control", "state/control/requests", "state/control/results")
"""The technician's control directory and its two: a FIFO there leaves requests refused, reported."""

REFUSAL_LOGGED = set(WRITTEN) - {"state/control/status.json"} | set(READ_AT_START)
"""Where ``own_file_refused`` must be logged (status.json is replaced atomically, never opened)."""


def own_file_agent(tmp_path: Path) -> AgentRun:
    """A real agent (no broker: alerts wait in the outbox) on one stream whose log over-currents."""
    (tmp_path / "logs").mkdir()
    write_linear_model(tmp_path / "bundled")
    (tmp_path / "config.toml").write_text(
        agent_config(
            port=1,
            robot_id="r1",
            heartbeat_interval_s=0.5,
            streams=[stream("arm1", "logs")],
            ingest={"watch": "poll", "poll_interval_s": 0.05},
            policy={"on_delay_windows": 2, "off_delay_windows": 2},
        )
    )
    # a line that is no record: the quarantine file is written at the first read
    (tmp_path / "logs" / "arm1.csv").write_text(HEADER + "not-a-time,x,y\n" + lines(0, PROFILE))
    return AgentRun(tmp_path / "config.toml", tmp_path / "agent.out")


def regular_or_absent(*paths: Path) -> bool:
    """Whether none of `paths` is a FIFO or another node a reader could block on."""
    return all(not_regular(p) is None for p in paths)


def stored_alerts(state: Path) -> list[dict[str, Any]]:
    """The alerts in the outbox; [] while the state file (or its WAL) is not a regular file to read."""
    db = state / "agent.db"
    if not db.exists() or not regular_or_absent(db, state / "agent.db-wal", state / "agent.db-shm"):
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    try:
        rows = conn.execute("SELECT payload FROM outbox WHERE kind = 'alert'").fetchall()
    except sqlite3.DatabaseError:
        return []
    finally:
        conn.close()
    return [json.loads(r[0]) for r in rows]


def health_state(state: Path) -> str | None:
    """The state in health.json, read only when it is a regular file (a FIFO would block the test)."""
    path = state / "health.json"
    if not path.exists() or not regular_or_absent(path):
        return None
    try:
        return str(json.loads(path.read_bytes().strip(b" \x00\n") or b"{}").get("state"))
    except ValueError:  # a write in progress
        return None


@pytest.mark.parametrize("name", WRITTEN + READ_AT_START + NOT_YET_READ + CONTROL)
def test_a_fifo_in_place_of_an_own_file_neither_blocks_nor_kills_the_agent(tmp_path: Path, name: str) -> None:
    """A FIFO planted before the start where the agent keeps `name`: it starts, stores the
    over-current alert, reports running in health.json and status, logs the refusal where it
    opens the file, leaves no FIFO where it writes, and SIGTERM ends it with exit 0 within 10 s.
    """
    run = own_file_agent(tmp_path)
    state = tmp_path / "state"
    planted = tmp_path / name
    planted.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(planted)
    run.start()
    try:
        run.wait(lambda: any(a["stream"] == "arm1" for a in stored_alerts(state)), "the alert stored")
        run.wait(lambda: health_state(state) == "running", "running in health.json")
        run.wait(lambda: "running" in run.status(), "running in status")
        assert 0 == run.stop(timeout=10)
    finally:
        run.kill()
    log = run.log()
    assert "Traceback" not in log
    refused = [e for e in run.events("own_file_refused") if e["path"] == str(planted)]
    if name in REFUSAL_LOGGED:
        assert refused, f"the refusal of {name} is logged"
        assert {"fifo"} == {e["found"] for e in refused}
    if name in WRITTEN:
        assert regular_or_absent(planted), f"the FIFO at {name} was replaced"
    if name in CONTROL:
        problems = [e["problem"] for e in run.events("control_directory_problem")]
        assert any(p.startswith(f"{planted}:") for p in problems), problems


def test_a_fifo_as_the_configured_log_file_is_moved_aside_and_the_log_written_there(tmp_path: Path) -> None:
    """[agent.logging] file is a FIFO at start: moved aside (logged), a regular log file made that
    holds the agent's lines, the alert stored, and SIGTERM exits 0 within 10 s.
    """
    run = own_file_agent(tmp_path)
    log_file = tmp_path / "log" / "agent.log"
    with run.config.open("a") as config:
        config.write(f'[agent.logging]\nfile = "{log_file}"\n')
    log_file.parent.mkdir()
    os.mkfifo(log_file)
    run.start()
    try:
        run.wait(
            lambda: any(a["stream"] == "arm1" for a in stored_alerts(run.config.parent / "state")), "alert"
        )
        assert 0 == run.stop(timeout=10)
    finally:
        run.kill()
    assert "Traceback" not in run.log()
    assert ["fifo"] == [e["found"] for e in run.events("own_file_refused") if e["path"] == str(log_file)]
    assert not_regular(log_file) is None
    assert '"agent_started"' in log_file.read_text()


def zero_symlink(path: Path) -> None:
    path.symlink_to("/dev/zero")


def zero_device(path: Path) -> None:
    os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers: a read never ends


NEVER_ENDING: dict[str, tuple[Callable[[Path], None], str]] = {
    "zero-symlink": (zero_symlink, "symlink"),
    "zero-device-node": (zero_device, "character device"),
}
"""What a never-ending read could be planted as (``mknod`` needs root, as CI runs), and what it is."""


@pytest.mark.parametrize("node", NEVER_ENDING.keys())
@pytest.mark.parametrize("name", ["state/fatal.log", "state/inflight", "state/health.json", "state/agent.db"])
def test_a_never_ending_node_in_place_of_an_own_file_is_moved_aside_at_start(
    tmp_path: Path, name: str, node: str
) -> None:
    """A symlink to /dev/zero, or a zero device node of its own, where the agent writes `name`: moved
    aside (logged as what it is), a regular file made instead, the alert stored, SIGTERM exits 0 in 10 s.
    """
    make, kind = NEVER_ENDING[node]
    run = own_file_agent(tmp_path)
    state = tmp_path / "state"
    planted = tmp_path / name
    planted.parent.mkdir(parents=True, exist_ok=True)
    make(planted)
    run.start()
    try:
        run.wait(lambda: any(a["stream"] == "arm1" for a in stored_alerts(state)), "the alert stored")
        run.wait(lambda: health_state(state) == "running", "running in health.json")
        assert 0 == run.stop(timeout=10)
    finally:
        run.kill()
    assert "Traceback" not in run.log()
    assert {kind} == {e["found"] for e in run.events("own_file_refused") if e["path"] == str(planted)}
    assert not_regular(planted) is None, "a regular file in its place"
    kept = [p for p in planted.parent.glob(f"{planted.name}.*") if not_regular(p) == kind]
    assert kept, "the planted node kept aside, not lost"


def test_an_own_file_open_error_other_than_a_node_is_raised_as_it_was(tmp_path: Path) -> None:
    """A missing directory is ENOENT as before, not a refusal."""
    with pytest.raises(FileNotFoundError) as caught:
        open_own(tmp_path / "no" / "such", os.O_RDWR | os.O_CREAT)
    assert errno.ENOENT == caught.value.errno
    assert not isinstance(caught.value, NotRegularFileError)


def test_status_and_alerts_with_fifos_in_a_stopped_agents_state_answer_at_once(tmp_path: Path) -> None:
    """The agent stopped, FIFOs as health.json, the status file and agent.db: ``status`` and
    ``alerts`` still answer (bounded: 30 s), naming the state file as no regular file; no traceback.
    """
    run = own_file_agent(tmp_path)
    state = tmp_path / "state"
    (state / "control").mkdir(parents=True)
    for name in ("health.json", "control/status.json", "agent.db"):
        os.mkfifo(state / name)
    status = run.status()
    alerts = agent_cli("alerts", run.config)
    assert "Traceback" not in status + alerts.stdout + alerts.stderr
    assert "not a regular file but a fifo" in alerts.stdout + alerts.stderr
    assert 0 != alerts.returncode


class TestExplainSource:
    def test_a_fifo_where_an_alerts_log_file_was_is_named_not_read(self, tmp_path: Path) -> None:
        """``explain`` shows an alert's source lines: a FIFO now in the log file's place is named, at once."""
        path = tmp_path / "arm1.csv"
        os.mkfifo(path)
        view = within(10, lambda: read_source(str(path), 0, 10))
        assert not view.present
        assert "it is no regular file now but a fifo" == view.note

    def test_the_lines_of_a_regular_log_file_are_shown_as_before(self, tmp_path: Path) -> None:
        """A regular file still holding the range: its lines."""
        path = tmp_path / "arm1.csv"
        path.write_text("ts,J1\n0.0,1.0\n")
        view = read_source(str(path), 6, 14)
        assert view.present
        assert ("0.0,1.0",) == view.lines
