"""A full disk and a damaged state file: the agent stays up, loses nothing, and mends itself.

The state directory sits on a real tmpfs of 8 MiB, filled to the last byte by a filler
file; the agent is the real one, as a subprocess, with a real Mosquitto where delivery
matters. A damaged agent.db is a real SQLite file with a garbage header or cut short.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import OutboxConfig
from agent.outbox import Outbox
from agent.publish import Delivery
from agent.seams import OutboundMessage
from agent.state import StateStore
from agent.testing import InMemoryTransport, ManualClock
from tests.agent_config import agent_config
from tests.agent_runs import AgentRun, outbox_alerts, saved_samples
from tests.fake_broker import Collector
from tests.models import write_linear_model
from tests.mosquitto import Broker, require_mosquitto
from tests.tmpfs import SmallDisk, small_disk

HEADER = "ts,J1,T1\n"
FAULT = [0.1] * 12 + [1.0] * 12 + [0.1] * 16  # raises one alert and clears it


def lines(start: int, currents: list[float]) -> str:
    return "".join(f"{start + i}.0,{c},40.0\n" for i, c in enumerate(currents))


@pytest.fixture(name="disk")
def _disk(tmp_path: Path) -> Iterator[SmallDisk]:
    with small_disk(tmp_path / "disk") as disk:
        yield disk


class Agent(AgentRun):
    """The real agent with its state directory on `state_dir`, its log in ``root/logs``."""

    def __init__(self, root: Path, state_dir: Path, port: int = 1) -> None:
        super().__init__(root / "config.toml", root / "agent.out")
        self.root = root
        self.state_dir = state_dir
        (root / "logs").mkdir(parents=True, exist_ok=True)
        write_linear_model(root / "bundled")
        self.config.write_text(
            agent_config(
                port=port,
                robot_id="r1",
                heartbeat_interval_s=0.5,
                agent={"state_dir": str(state_dir)},
                mqtt={"reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
                ingest={"watch": "poll", "poll_interval_s": 0.05},
                policy={"on_delay_windows": 2, "off_delay_windows": 2},
            )
        )

    def append(self, text: str) -> None:
        path = self.root / "logs" / "arm1.csv"
        new = not path.exists()
        with path.open("a") as handle:
            handle.write((HEADER if new else "") + text)

    def saved_samples(self) -> int:
        return saved_samples(self.state_dir)

    def outbox_alert_ids(self) -> list[str]:
        return [a["event_id"] for a in outbox_alerts(self.state_dir)]


def reference_ids(root: Path, text: str) -> list[str]:
    """The alert ids of an agent that reads `text` without trouble."""
    agent = Agent(root, root / "state")
    agent.append(text)
    agent.start()
    try:
        agent.wait(lambda: agent.saved_samples() == text.count("\n"), "the reference run")
        assert 0 == agent.stop()
    finally:
        agent.kill()
    return agent.outbox_alert_ids()


class TestAFullDiskAtRunTime:
    def test_the_agent_stays_up_delivers_what_it_holds_and_resumes_by_itself_losing_nothing(
        self, tmp_path: Path, disk: SmallDisk
    ) -> None:
        """Alerts wait for a broker; the disk fills; the broker comes: they are delivered while the disk is
        full, the heartbeat says so, new lines wait unread. Space returns: they are read and alerted.
        """
        require_mosquitto()
        first, second = lines(0, FAULT), lines(len(FAULT), FAULT)
        expected = reference_ids(tmp_path / "reference", first + second)
        assert 4 == len(expected), "two faults: each raised and cleared"
        broker = Broker(workdir=tmp_path / "broker")  # not started yet: alerts queue in the outbox
        agent = Agent(tmp_path / "agent", disk.path / "state", port=broker.port)
        agent.append(first)
        agent.start()
        try:
            agent.wait(lambda: len(agent.outbox_alert_ids()) == 2, "the first alerts stored")
            disk.fill()
            agent.append(second)
            agent.wait(lambda: bool(agent.events("disk_full")), "disk_full logged")
            assert "disk full" in agent.status()
            samples = agent.saved_samples()
            broker.start()
            with Collector(broker.port, ("robotpm/v1/#",)) as collector:
                collector.wait_for(lambda c: len(alert_ids(c)) >= 2, 30)
                assert expected[:2] == alert_ids(collector), "delivered while the disk is full"
                assert collector.wait_for(lambda c: "disk" in last_heartbeat(c).get("faults", {}), 30)
                assert samples == agent.saved_samples(), "nothing read past the last commit"
                assert agent.running()
                disk.free()
                agent.wait(lambda: bool(agent.events("disk_space_back")), "disk_space_back logged")
                assert collector.wait_for(lambda c: set(alert_ids(c)) >= set(expected), 30)
                assert collector.wait_for(lambda c: "disk" not in last_heartbeat(c).get("faults", {}), 30)
            assert sorted(set(alert_ids(collector))) == sorted(expected)
            assert 0 == agent.stop()
        finally:
            agent.kill()
            broker.stop()
        assert "Traceback" not in agent.log()

    def test_delivery_goes_on_on_a_full_disk_and_deletes_the_acknowledged_rows_when_space_returns(
        self, disk: SmallDisk
    ) -> None:
        """Rows stored before the disk filled are sent and acknowledged; their deletion waits for room."""
        clock = ManualClock()
        store = StateStore(disk.path / "agent.db")
        outbox = Outbox(store, OutboxConfig(), clock)
        rows = [
            OutboundMessage(f"row-{i}", "heartbeat", "robotpm/v1/lab/r1/heartbeat", b"{}") for i in range(5)
        ]
        with store.transaction() as conn:
            outbox.enqueue(conn, rows)
        transport = InMemoryTransport()
        delivery = Delivery(outbox, transport, clock=clock)
        disk.fill()
        delivery.pump()  # hand them over
        delivery.pump()  # their acknowledgements: the deletes cannot be written
        assert 5 == len(transport.messages())
        assert 5 == outbox.depth()
        disk.free()
        delivery.pump()
        assert 0 == outbox.depth()
        assert 5 == len(transport.messages()), "nothing sent twice"
        store.close()


class TestAStartOnAFullDisk:
    def test_waits_and_says_so_then_starts_by_itself_when_space_returns(
        self, tmp_path: Path, disk: SmallDisk
    ) -> None:
        """The state exists, the disk is full: no exit, "disk full" in log and status; freed, it starts."""
        agent = Agent(tmp_path / "agent", disk.path / "state")
        agent.append(lines(0, FAULT))
        agent.start()
        try:
            agent.wait(lambda: agent.saved_samples() == len(FAULT), "the first run")
            assert 0 == agent.stop()
            disk.fill()
            agent.start()
            agent.wait(lambda: bool(agent.events("disk_full")), "disk_full logged")
            agent.wait(lambda: "disk full" in agent.status(), "status says disk full")
            time.sleep(1.0)  # it keeps waiting: no exit (wait() checks)
            assert agent.running()
            assert not agent.events("agent_started")[1:], "not started on the full disk"
            disk.free()
            agent.wait(lambda: len(agent.events("agent_started")) == 2, "started once there is room")
            assert 0 == agent.stop()
        finally:
            agent.kill()
        assert "Traceback" not in agent.log()

    def test_a_stop_while_waiting_for_space_exits_cleanly(self, tmp_path: Path, disk: SmallDisk) -> None:
        """SIGTERM during the wait ends it at once with exit 0."""
        agent = Agent(tmp_path / "agent", disk.path / "state")
        agent.start()
        try:
            agent.wait(lambda: bool(agent.events("agent_started")), "the first run")
            assert 0 == agent.stop()
            disk.fill()
            agent.start()
            agent.wait(lambda: bool(agent.events("disk_full")), "disk_full logged")
            started = time.monotonic()
            assert 0 == agent.stop()
            assert time.monotonic() - started < 10.0
        finally:
            agent.kill()


def checkpoint(path: Path) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def damage_header(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.write(b"this is not an SQLite database, it was overwritten")


def cut_short(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [damage_header, cut_short], ids=["garbage-header", "truncated"])
def test_a_damaged_state_file_is_moved_aside_and_the_agent_replays_with_the_same_ids(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    """agent.db damaged while stopped: it is renamed agent.db.damaged-<time>, the error is loud, and a
    fresh start reads the log again, storing the same alert ids (at-least-once).
    """
    agent = Agent(tmp_path / "agent", tmp_path / "agent" / "state")
    agent.append(lines(0, FAULT) + lines(len(FAULT), FAULT))
    agent.start()
    try:
        agent.wait(lambda: len(agent.outbox_alert_ids()) == 4, "the first run's alerts")
        assert 0 == agent.stop()
        before = agent.outbox_alert_ids()
        checkpoint(agent.state_dir / "agent.db")  # every page in the main file: the damage is the whole story
        damage(agent.state_dir / "agent.db")
        agent.start()
        agent.wait(lambda: agent.outbox_alert_ids() == before, "the same alerts after the replay")
        [moved] = agent.events("state_damaged_moved_aside")
        assert "error" == moved["level"]
        aside = list(agent.state_dir.glob("agent.db.damaged-*"))
        assert [Path(moved["moved_to"]).name] == [p.name for p in aside]
        assert "state: agent.db was damaged" in agent.status()
        assert 0 == agent.stop()
    finally:
        agent.kill()
    assert "Traceback" not in agent.log()


def alert_ids(collector: Collector) -> list[str]:
    out: list[str] = []
    for message in collector.on("/alerts"):
        event_id = json.loads(message.payload)["event_id"]
        if event_id not in out:
            out.append(event_id)
    return out


def last_heartbeat(collector: Collector) -> dict[str, Any]:
    beats = collector.on("/heartbeat")
    return json.loads(beats[-1].payload) if beats else {}
