"""The real agent, SIGKILLed during a broker outage and restarted: no alert is missing.

A reference agent reads the same log without interruption; the crashed one must
deliver the same alert events (same windows, states and severities), and any
duplicates repeat an event_id.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agent_config import agent_config
from tests.agent_process import spawn_agent
from tests.fake_broker import Collector
from tests.models import write_linear_model
from tests.mosquitto import Broker
from tests.waiting import wait_until

CYCLES = 30  # each cycle: 10 high lines (raise), 10 low lines (clear)


def lines(start_cycle: int, end_cycle: int) -> str:
    out = []
    for cycle in range(start_cycle, end_cycle):
        for i in range(20):
            n = cycle * 20 + i
            out.append(f"{n}.0,{1.0 if i < 10 else 0.1},40.0\n")
    return "".join(out)


class Agent:
    """One agent process in its own directory."""

    def __init__(self, root: Path, robot: str, port: int) -> None:
        self.root = root
        (root / "logs").mkdir(parents=True, exist_ok=True)
        write_linear_model(root / "bundled")
        (root / "config.toml").write_text(
            agent_config(
                port=port,
                robot_id=robot,
                site="crash",
                heartbeat_interval_s=0.5,
                mqtt={"keepalive_s": 5, "reconnect_min_s": 1, "reconnect_max_s": 1},
                ingest={"watch": "poll", "poll_interval_s": 0.02},
                policy={"on_delay_windows": 2, "off_delay_windows": 2},
            )
        )
        self.log = root / "logs" / "arm1.csv"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = spawn_agent(self.root / "config.toml", self.root / "agent.out")

    def append(self, text: str) -> None:
        new = not self.log.exists()
        with self.log.open("a") as handle:
            if new:
                handle.write("ts,J1,T1\n")
            handle.write(text)

    def outbox_alerts(self) -> int:
        db = self.root / "state" / "agent.db"
        if not db.exists():
            return 0
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'alert'").fetchone()[0])
        except sqlite3.Error:
            return 0

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)


def episodes(sub: Collector, robot: str) -> list[tuple[int, str, str | None]]:
    return [
        (m.json()["window"]["index"], m.json()["state"], m.json()["severity"])
        for m in sub.on("/alerts")
        if m.json()["robot_id"] == robot
    ]


def online(sub: Collector, robot: str) -> bool:
    states = [m.json()["state"] for m in sub.on("/status") if m.json()["robot_id"] == robot]
    return bool(states) and states[-1] == "online"


def ids(sub: Collector, robot: str) -> list[str]:
    return [m.json()["event_id"] for m in sub.on("/alerts") if m.json()["robot_id"] == robot]


OBSERVED = ("robotpm/v1/+/+/alerts", "robotpm/v1/+/+/status")
"""What the observers of these tests subscribe to: every robot's alerts and status."""


@pytest.fixture(name="agents")
def _agents(tmp_path: Path, broker: Broker) -> Iterator[Callable[[str, str], Agent]]:
    """Makes agents (directory under tmp_path, robot id) on the broker; SIGKILLs any left running."""
    made: list[Agent] = []

    def make(directory: str, robot_id: str) -> Agent:
        agent = Agent(tmp_path / directory, robot_id, broker.port)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        if agent.process is not None and agent.process.poll() is None:
            agent.stop(signal.SIGKILL)


@pytest.mark.slow
def test_agent_killed_during_an_outage_delivers_every_alert_after_restart(
    broker: Broker, agents: Callable[[str, str], Agent]
) -> None:
    """SIGKILL while alerts wait in the outbox during an outage; after restart missing = 0."""
    with Collector(broker.port, OBSERVED, client_id="crash-observer") as sub:
        reference = agents("reference", "ref-robot")
        reference.append(lines(0, CYCLES))
        reference.start()
        expected_count = 2 * CYCLES
        wait_until(lambda: len(episodes(sub, "ref-robot")) >= expected_count, 60, "the reference alerts")
        assert 0 == reference.stop()

        crashed = agents("crashed", "crash-robot")
        crashed.start()
        wait_until(lambda: online(sub, "crash-robot"), 20, "the agent online")
        broker.stop()  # the outage begins (SIGTERM: the observer's session is saved)
        crashed.append(lines(0, CYCLES // 2))
        wait_until(lambda: crashed.outbox_alerts() >= CYCLES // 2, 30, "alerts waiting in the outbox")
        assert -signal.SIGKILL == crashed.stop(signal.SIGKILL)
        crashed.append(lines(CYCLES // 2, CYCLES))  # more lines arrive while the agent is down
        broker.start()
        crashed.start()
        wait_until(
            lambda: len(set(ids(sub, "crash-robot"))) >= expected_count, 60, "the crashed robot's alerts"
        )
        time.sleep(0.5)  # let any duplicate arrive before counting
        assert 0 == crashed.stop()

        want = sorted(set(episodes(sub, "ref-robot")))
        got = episodes(sub, "crash-robot")
        received_ids = ids(sub, "crash-robot")
    assert expected_count == len(want)
    assert [] == sorted(set(want) - set(got)), "missing alert events"
    assert [] == sorted(set(got) - set(want)), "unexpected alert events"
    duplicates = Counter(received_ids) - Counter(set(received_ids))
    assert len(got) - len(set(got)) == sum(duplicates.values()), "duplicates only repeat event ids"


def test_retained_status_reads_offline_within_one_and_a_half_keepalives_after_sigkill(
    broker: Broker, agents: Callable[[str, str], Agent]
) -> None:
    """The real agent, killed with SIGKILL: its last will marks it offline within 1.5 x keepalive (5 s)."""
    with Collector(broker.port, ("robotpm/v1/+/+/status",), client_id="lwt-observer") as sub:
        agent = agents("lwt", "lwt-robot")
        agent.start()
        wait_until(lambda: online(sub, "lwt-robot"), 20, "the agent online")
        agent.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: not online(sub, "lwt-robot"), 1.5 * 5, "the retained offline")
        last = [m for m in sub.on("/status") if m.json()["robot_id"] == "lwt-robot"][-1]
    assert last.at - killed <= 1.5 * 5
    assert ("offline", "connection lost (last will)") == (last.json()["state"], last.json()["reason"])


@pytest.mark.slow
def test_real_agent_through_broker_off_on_cycles_loses_no_alert(
    broker: Broker, agents: Callable[[str, str], Agent]
) -> None:
    """Lines keep arriving while the broker goes off and on 3 times (1 s / 1 s): missing = 0."""
    with Collector(broker.port, OBSERVED, client_id="cycle-observer") as sub:
        live = agents("live", "live-robot")
        live.append("")
        live.start()
        wait_until(lambda: online(sub, "live-robot"), 20, "the agent online")
        written = 0
        for phase in ("on", "off") * 3 + ("on",):
            if phase == "off":
                broker.stop()
            elif not broker.running:
                broker.start()
            until = time.monotonic() + 1.0
            while time.monotonic() < until:  # two raise/clear cycles every 100 ms
                live.append(lines(written, written + 1))
                written += 1
                time.sleep(0.05)
        wait_until(
            lambda: len(set(ids(sub, "live-robot"))) >= 2 * written, 60, "every alert of the live robot"
        )
        assert 0 == live.stop()

        reference = agents("reference", "ref-robot")
        reference.log.write_bytes(live.log.read_bytes())
        reference.start()
        wait_until(lambda: len(episodes(sub, "ref-robot")) >= 2 * written, 60, "the reference alerts")
        assert 0 == reference.stop()
        want, got = set(episodes(sub, "ref-robot")), episodes(sub, "live-robot")
        received_ids = ids(sub, "live-robot")
    assert 2 * written == len(want)
    assert set() == want - set(got), "missing alert events"
    assert set() == set(got) - want, "unexpected alert events"
    assert len(got) - len(set(got)) == len(received_ids) - len(set(received_ids)), "duplicates repeat ids"
