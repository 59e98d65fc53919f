"""The journal, shelving, the status file and the alarm log, as the robot and its technician see them.

The robot (`tests.test_technician_cli.Robot`) is the real daemon with real SQLite,
log files and control directory, an in-memory broker and a manual clock.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.contract.alerts import AlertEvent
from agent.daemon import AgentDaemon
from agent.journal import AlertJournal, journal_size, read_events, read_open_alerts
from agent.state import StateStore
from agent.technician.settings import JournalConfig, ShelvingConfig
from agent.technician.shelving import Shelving
from agent.testing import InMemoryTransport, ManualClock
from tests.test_technician_cli import FAULT, Robot, csv_lines
from tests.test_technician_cli import _robot as _robot  # the same robot fixture


def journal(robot: Robot) -> list[dict[str, Any]]:
    conn = sqlite3.connect(robot.root / "state" / "agent.db")
    try:
        return [{"event": e.event, "published": e.published, "context": e.context} for e in read_events(conn)]
    finally:
        conn.close()


def alerts_json(robot: Robot, *args: str) -> dict[str, Any]:
    code, out, err = robot.cli("alerts", *args, "--json")
    assert (0, "") == (code, err)
    loaded: dict[str, Any] = json.loads(out)
    return loaded


def an_event(i: int, state: str = "raised", alert_id: str | None = None) -> AlertEvent:
    body = {
        "event_id": f"{i:032x}",
        "alert_id": alert_id or f"{i:032x}",
        "robot_id": "r1",
        "site": "lab",
        "stream": "arm1",
        "component": "joint1",
        "failure_mode": "overcurrent",
        "state": state,
        "severity": None if state == "cleared" else "critical",
        "score": 1.0,
        "threshold": 0.8,
        "window": {
            "index": i,
            "start": 0.0,
            "end": 1.0,
            "source_file": "x.csv",
            "byte_start": 0,
            "byte_end": 9,
        },
        "model": {"id": "m", "version": 1},
        "agent_version": "0",
        "replayed": False,
        "emitted_at": "2024-01-01T00:00:00Z",
    }
    return AlertEvent.model_validate(body)


class TestTheJournal:
    def test_every_event_stays_on_the_robot_after_the_broker_acknowledged_it(self, robot: Robot) -> None:
        """The raise and clear are journaled with the ids published, and stay once the outbox row is gone."""
        robot.log(csv_lines(0, FAULT))
        robot.settle()
        published = [a["event_id"] for a in robot.published_alerts()]
        assert 0 == robot.daemon.outbox.depth_by_kind().get("alert", 0)  # type: ignore[union-attr]
        kept = journal(robot)
        assert published == [e["event"].event_id for e in kept]
        assert ["raised", "cleared"] == [e["event"].state for e in kept]
        assert all(e["published"] for e in kept)

    def test_each_event_keeps_its_thresholds_features_and_the_scores_before_it(self, robot: Robot) -> None:
        """The context explain needs is journaled with the event: thresholds, every feature, scores."""
        robot.log(csv_lines(0, FAULT))
        robot.settle()
        context = journal(robot)[0]["context"]
        assert {"warning": 0.5, "critical": 0.8, "clear": 0.3} == context["thresholds"]
        assert 4 == len(context["features"])
        assert context["scores"][-1][2] == pytest.approx(1.0)
        assert context["scores"][0][2] == pytest.approx(0.1)

    def test_the_journal_survives_a_restart_and_the_lines_read_again_add_nothing(self, robot: Robot) -> None:
        """A restarted agent keeps the journal; reading the same log again writes no duplicate."""
        robot.log(csv_lines(0, FAULT))
        robot.settle()
        robot.daemon.shutdown()
        conn = sqlite3.connect(robot.root / "state" / "agent.db")
        conn.execute("DELETE FROM stream_state")  # the stream is read from its start again
        conn.commit()
        conn.close()
        robot.daemon = AgentDaemon(robot.config, transport=InMemoryTransport(), clock=ManualClock())
        robot.daemon.startup()
        robot.settle()
        assert ["raised", "cleared"] == [e["event"].state for e in journal(robot)]

    def test_a_transaction_rolled_back_leaves_no_journal_row(self, tmp_path: Path) -> None:
        """The journal row commits with the caller's transaction or not at all."""
        store = StateStore(tmp_path / "agent.db")
        book = AlertJournal(store, JournalConfig(), lambda: 0.0)

        def crash() -> None:
            with store.transaction() as conn:
                book.record(conn, an_event(1), {}, published=True)
                raise RuntimeError("crash before the commit")

        with pytest.raises(RuntimeError):
            crash()
        assert (0, 0) == journal_size(store.connection)
        assert [] == read_open_alerts(store.connection)
        store.close()

    def test_the_journal_keeps_within_its_byte_bound_oldest_first(self, tmp_path: Path) -> None:
        """Past max_bytes the oldest events go; the open-alerts list is not trimmed."""
        store = StateStore(tmp_path / "agent.db")
        running = [0.0]
        book = AlertJournal(store, JournalConfig(max_bytes=64 << 10), lambda: running[0])
        context = {"pad": "x" * 1000}
        for i in range(200):
            with store.transaction() as conn:
                book.record(conn, an_event(i), context, published=True)
                running[0] += 10.0  # past the retention period each time
                book.retain(conn)
        rows, size = journal_size(store.connection)
        assert size <= 64 << 10
        assert 20 < rows < 200
        kept = read_events(store.connection, limit=1000)
        assert 199 == kept[-1].event.window.index  # the newest stay
        assert 200 == len(read_open_alerts(store.connection))  # 200 raises, none cleared: all open
        store.close()

    def test_the_journal_forgets_events_older_than_its_age_bound(self, tmp_path: Path) -> None:
        """Events older than max_age_s of agent running time are deleted."""
        store = StateStore(tmp_path / "agent.db")
        running = [0.0]
        book = AlertJournal(store, JournalConfig(max_age_s=100.0), lambda: running[0])
        with store.transaction() as conn:
            book.record(conn, an_event(1), {}, published=True)
        running[0] = 50.0
        with store.transaction() as conn:
            book.record(conn, an_event(2), {}, published=True)
        running[0] = 120.0
        with store.transaction() as conn:
            assert 1 == book.retain(conn)
        assert [2] == [e.event.window.index for e in read_events(store.connection)]
        store.close()


class TestShelving:
    def shelve(self, robot: Robot, *args: str) -> None:
        code, out, err = robot.request("shelve", *args)
        assert 0 == code, out + err

    def test_a_shelved_stream_keeps_scoring_and_journaling_but_raises_nothing(self, robot: Robot) -> None:
        """While shelved, a raise is journaled (withheld) and not published; the open view marks it."""
        self.shelve(robot, "--stream", "arm1", "--for", "2h", "--reason", "gearbox swap")
        robot.log(csv_lines(0, [0.1] * 6 + [1.0] * 6))
        robot.settle()
        assert [] == robot.published_alerts()
        (kept,) = journal(robot)
        assert ("raised", False) == (kept["event"].state, kept["published"])
        (open_view,) = [
            json.loads(m.payload) for m in robot.transport.messages() if m.topic.endswith("open_alerts")
        ][-1:]
        assert [True] == [a["shelved"] for a in open_view["alerts"]]
        assert "shelved: gearbox swap" == open_view["alerts"][0]["shelve_reason"]

    def test_a_shelve_ends_by_itself_and_the_alert_still_open_is_raised_then(self, robot: Robot) -> None:
        """When the shelve's time is up, the withheld raise is published with its own event id."""
        self.shelve(robot, "--all", "--for", "3s", "--reason", "tool change")
        robot.log(csv_lines(0, [0.1] * 6 + [1.0] * 6))
        robot.settle(10)
        assert [] == robot.published_alerts()
        withheld = journal(robot)[0]["event"].event_id
        robot.settle(100)  # 5 s of agent time
        assert [withheld] == [a["event_id"] for a in robot.published_alerts()]
        assert journal(robot)[0]["published"]
        assert any(line["event"] == "shelve_expired" for line in robot.log_lines())

    def test_unshelve_raises_what_is_still_open_and_a_clear_then_goes_out(self, robot: Robot) -> None:
        """Unshelving publishes the open alert's raise; its later clear is published as usual."""
        self.shelve(robot, "--stream", "arm1", "--for", "1h", "--reason", "test")
        robot.log(csv_lines(0, [0.1] * 6 + [1.0] * 6))
        robot.settle()
        code, out, err = robot.request("unshelve", "--stream", "arm1")
        assert 0 == code, out + err
        robot.log(csv_lines(12, [0.1] * 10))
        robot.settle()
        assert ["raised", "cleared"] == [a["state"] for a in robot.published_alerts()]

    def test_a_clear_of_an_alert_subscribers_saw_is_published_even_while_shelved(self, robot: Robot) -> None:
        """Shelving after the raise went out: updates are withheld, but the clear is published."""
        robot.log(csv_lines(0, [0.1] * 6 + [1.0] * 6))
        robot.settle()
        alert = robot.published_alerts()[0]["alert_id"]
        self.shelve(robot, alert[:12], "--for", "1h", "--reason", "known fault")  # as alerts shows it
        robot.log(csv_lines(12, [0.1] * 10))
        robot.settle()
        assert ["raised", "cleared"] == [a["state"] for a in robot.published_alerts()]

    def test_a_wall_clock_stepped_back_does_not_lengthen_a_shelve(self, tmp_path: Path) -> None:
        """The shelve ends on the agent's running clock even when the wall clock went back a day."""
        store = StateStore(tmp_path / "agent.db")
        wall, running = [1_700_000_000.0], [0.0]
        shelving = Shelving(store, ShelvingConfig(), wall=lambda: wall[0], running_s=lambda: running[0])
        request = {
            "id": "0000000000000001-00000001",
            "action": "shelve",
            "all": True,
            "for_s": 60.0,
            "reason": "r",
            "requested_at": "2024-01-01T00:00:00Z",
        }
        with store.transaction() as conn:
            assert shelving.handle(conn, json.dumps(request).encode(), 0).ok
        wall[0] -= 86400.0
        running[0] = 61.0
        with store.transaction() as conn:
            assert 1 == len(shelving.expire(conn))
        assert [] == shelving.shelves
        store.close()

    def test_a_shelve_longer_than_allowed_or_without_a_known_alert_is_refused(self, robot: Robot) -> None:
        """The agent refuses a shelve past [agent.shelving] max_for_s, and an alert id it never saw."""
        code, out, _ = robot.request("shelve", "--all", "--for", "30d", "--reason", "forever")
        assert 1 == code
        assert "max_for_s" in out
        code, out, _ = robot.request("shelve", "0" * 32, "--reason", "what")
        assert 1 == code
        assert "no alert" in out

    def test_a_world_writable_request_directory_refuses_every_request(self, robot: Robot) -> None:
        """If anyone could write requests, the agent applies none and says why."""
        requests = robot.root / "state" / "control" / "requests"
        requests.chmod(0o2777)
        code, out, _ = robot.request("shelve", "--all", "--for", "1h", "--reason", "x")
        assert 1 == code
        assert "writable by every user" in out
        assert [] == robot.daemon.fieldops.shelving.shelves  # type: ignore[union-attr]


@pytest.fixture(name="open_robot")
def _open_robot() -> Iterator[Robot]:
    """A robot in a directory every user can traverse, its control group ``users``."""
    root = Path(tempfile.mkdtemp(prefix="robotpm-perm-", dir="/tmp"))
    root.chmod(0o755)
    robot = Robot(root, control_group="users")
    yield robot
    robot.close()
    shutil.rmtree(root)


def cli_as(robot: Robot, uid: int, gid: int, groups: list[int], *args: str) -> int:
    """Run the CLI in a forked child that dropped to `uid` (the kernel checks its permissions)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 70
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            code, _, _ = robot.cli(*args)
        except BaseException as exc:
            os.write(2, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class TestWhoMayShelve:
    """Tests run as root (see the brief of the test suite): a forked child drops to nobody."""

    def test_the_control_directory_is_group_writable_for_the_configured_group_only(
        self, open_robot: Robot
    ) -> None:
        """requests/ is mode 2770, group users: root and members of users may write there, no one else."""
        info = (open_robot.root / "state" / "control" / "requests").stat()
        assert 0o2770 == stat.S_IMODE(info.st_mode)
        assert 100 == info.st_gid

    def test_a_user_outside_the_group_may_not_shelve(self, open_robot: Robot) -> None:
        """Nobody (not in users) gets exit 4 and no request reaches the agent."""
        code = cli_as(open_robot, 65534, 65534, [], "shelve", "--all", "--reason", "x", "--wait", "0")
        assert 4 == code
        assert [] == list((open_robot.root / "state" / "control" / "requests").iterdir())

    def test_a_member_of_the_group_may_shelve(self, open_robot: Robot) -> None:
        """Nobody with users as a supplementary group writes a request; the agent applies it."""
        code = cli_as(open_robot, 65534, 65534, [100], "shelve", "--all", "--reason", "x", "--wait", "0")
        assert code in (0, 3)  # 3: answered later (this test's daemon ticks only after the child exits)
        open_robot.settle(40)
        shelves = open_robot.daemon.fieldops.shelving.shelves  # type: ignore[union-attr]
        assert ["all"] == [s.scope for s in shelves]
        assert "(uid 65534)" in shelves[0].by


class TestStatus:
    def test_a_running_agent_with_its_broker_is_healthy(self, robot: Robot) -> None:
        """Fresh status file, broker connected: exit 0."""
        robot.settle(2)
        code, out, _ = robot.cli("status")
        assert 0 == code, out
        assert "running, healthy" in out

    def test_an_unreachable_broker_makes_it_degraded(self, robot: Robot) -> None:
        """The broker link down: exit 1, and the reason says so."""
        robot.transport.drop_connection()
        robot.daemon.fieldops._status_due = True  # type: ignore[union-attr]
        robot.settle(2)
        code, out, _ = robot.cli("status", "--json")
        assert 1 == code
        assert "broker 127.0.0.1:1883 not connected" in json.loads(out)["reasons"]

    def test_a_status_file_no_one_refreshes_means_not_running(self, robot: Robot) -> None:
        """A killed agent leaves its status file behind; once stale, status exits 3."""
        robot.settle(2)
        status = robot.root / "state" / "control" / "status.json"
        old = time.time() - 600
        os.utime(status, (old, old))
        code, out, _ = robot.cli("status")
        assert 3 == code
        assert "NOT RUNNING" in out
        assert "600 s old" in out

    def test_after_a_clean_stop_the_agent_is_not_running(self, robot: Robot) -> None:
        """The last status file says stopped: exit 3."""
        robot.settle(2)
        robot.close()
        code, out, _ = robot.cli("status")
        assert 3 == code
        assert "the agent stopped at" in out

    def test_a_bad_config_exits_2_naming_the_key(self, robot: Robot) -> None:
        """A config the CLI cannot load: exit 2, the key named."""
        robot.config_path.write_text(robot.config_path.read_text().replace('robot_id = "r1"', "robot_id = 5"))
        code, _, err = robot.cli("status")
        assert 2 == code
        assert "robot_id" in err


class TestExplain:
    def test_explain_says_when_the_source_lines_are_gone(self, robot: Robot) -> None:
        """With the log file deleted, explain still explains, and says the raw lines are gone."""
        robot.log(csv_lines(0, FAULT))
        robot.settle()
        alert = robot.published_alerts()[0]["alert_id"]
        (robot.root / "logs" / "arm1.csv").unlink()
        code, out, _ = robot.cli("explain", alert, "--json")
        assert 0 == code
        source = json.loads(out)["source"]
        assert (False, "the file is gone (rotated away or deleted)") == (source["present"], source["note"])

    def test_explain_of_an_unknown_id_exits_1_and_says_where_to_look(self, robot: Robot) -> None:
        """An id the journal does not hold: exit 1, one line pointing at robotpm-agent alerts."""
        code, out, err = robot.cli("explain", "f" * 32)
        assert (1, "") == (code, out)
        assert "robotpm-agent alerts" in err


class TestTheAlarmLog:
    def test_every_raise_clear_and_shelve_is_logged_with_robot_stream_and_model(self, robot: Robot) -> None:
        """Each alarm log line names the robot, the stream and the model version."""
        code, out, err = robot.request("shelve", "--stream", "arm1", "--for", "1h", "--reason", "swap")
        assert 0 == code, out + err
        robot.log(csv_lines(0, [0.1] * 6 + [1.0] * 6))
        robot.settle()
        lines = {line["event"]: line for line in robot.log_lines()}
        for event in ("alert_shelved", "alert_raised"):
            assert ("r1", "test-linear@1") == (lines[event]["robot"], lines[event]["model"])
        assert "arm1" == lines["alert_raised"]["stream"]
        assert "arm1" == lines["alert_shelved"]["stream"]
        assert lines["alert_raised"]["published"] is False
