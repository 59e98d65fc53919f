"""The whole agent over rotating logs: SIGKILL at 20 random points loses and invents no alert.

A writer appends to ``arm1.csv`` in small bursts and rotates it (rename, and every
third time copytruncate) while the real agent (``python -m agent.cli run``) follows
it; the agent is SIGKILLed at 20 random instants and restarted (sometimes after a
pause, so rotations happen while it is down). A reference agent reads the same
lines from one file without interruption. The set of alert event ids received by a
real mosquitto subscriber must be equal: exactly-once scoring end to end.

Also: a backlog found at start-up is flagged ``replayed``, and two streams in one
agent keep their own positions and ids.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_config import agent_config, stream
from tests.agent_process import spawn_agent
from tests.fake_broker import Collector
from tests.models import write_linear_model
from tests.mosquitto import Broker
from tests.waiting import wait_until

HEADER = "ts,J1,T1\n"


def cycle_lines(start: int, end: int) -> list[str]:
    """20 lines per cycle: 10 high (raise), 10 low (clear); timestamps strictly increasing."""
    out = []
    for cycle in range(start, end):
        for i in range(20):
            n = cycle * 20 + i
            out.append(f"{n}.0,{1.0 if i < 10 else 0.1},40.0\n")
    return out


class Agent:
    """One agent process with its own directory, config and state."""

    def __init__(self, root: Path, site: str, port: int, streams: tuple[str, ...] = ("arm1",)) -> None:
        self.root = root
        self.site = site
        write_linear_model(root / "bundled")
        for name in streams:
            (root / name).mkdir(parents=True, exist_ok=True)
        (root / "config.toml").write_text(
            agent_config(
                port=port,
                robot_id="ingest-robot",
                site=site,
                heartbeat_interval_s=60,
                mqtt={"keepalive_s": 5, "reconnect_min_s": 0.2, "reconnect_max_s": 1},
                ingest={
                    "watch": "auto",
                    "poll_interval_s": 0.05,
                    "coalesce_ms": 5.0,
                    "checkpoint_interval_s": 0.2,
                    "release_after_s": 1.0,
                },
                policy={"on_delay_windows": 2, "off_delay_windows": 2, "max_events_per_minute": 100000},
                streams=[stream(name, name, patterns=["arm1.csv"]) for name in streams],
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = spawn_agent(self.root / "config.toml", self.root / "agent.out")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


class RotatingWriter:
    """Appends lines to <dir>/arm1.csv and rotates it like logrotate (rename, or copytruncate)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.current = directory / "arm1.csv"
        self.rotations = 0

    def append(self, lines: list[str]) -> None:
        new = not self.current.exists() or self.current.stat().st_size == 0
        with self.current.open("a") as handle:
            if new and not (self.rotations % 3 == 0 and self.rotations):
                handle.write(HEADER)
            handle.write("".join(lines))

    def rotate(self) -> None:
        self.rotations += 1
        for n in range(self.rotations, 0, -1):
            src = self.dir / f"arm1.csv.{n}"
            if src.exists():
                os.replace(src, self.dir / f"arm1.csv.{n + 1}")
        if self.rotations % 3 == 0:
            shutil.copyfile(self.current, self.dir / "arm1.csv.1")
            os.truncate(self.current, 0)  # the logger goes on without a new header
        else:
            os.replace(self.current, self.dir / "arm1.csv.1")


def started(agent: Agent) -> int:
    """How many times the agent got through start-up (its log says so)."""
    out = agent.root / "agent.out"
    return out.read_text().count('"agent_started"') if out.exists() else 0


def alert_ids(sub: Collector, site: str) -> list[str]:
    return [m.json()["event_id"] for m in sub.on("/alerts") if f"/{site}/" in m.topic]


def alerts(sub: Collector, site: str) -> list[dict[str, object]]:
    return [m.json() for m in sub.on("/alerts") if f"/{site}/" in m.topic]


def settle(sub: Collector, site: str, quiet: float = 1.5, timeout: float = 60) -> None:
    """Wait until no new alert for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    count, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = len(alert_ids(sub, site))
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


@pytest.fixture(name="agents")
def _agents() -> Iterator[list[Agent]]:
    made: list[Agent] = []
    yield made
    for agent in made:
        if agent.process is not None and agent.process.poll() is None:
            agent.kill()


CYCLES = 150


@pytest.mark.slow
def test_sigkill_at_20_random_points_while_logs_rotate_yields_the_uninterrupted_alert_ids(
    tmp_path: Path, broker: Broker, agents: list[Agent]
) -> None:
    """20 SIGKILLs while a writer appends and rotates: the alert ids equal an uninterrupted run's."""
    seed = int(os.environ.get("ROBOTPM_KILL_SEED", "20261126"))
    rng = random.Random(seed)
    lines = cycle_lines(0, CYCLES)
    with Collector(broker.port, ("robotpm/v1/+/+/alerts",), client_id="ingest-observer") as sub:
        reference = Agent(tmp_path / "reference", "reference", broker.port)
        agents.append(reference)
        (reference.root / "arm1" / "arm1.csv").write_text(HEADER + "".join(lines))
        reference.start()
        wait_until(lambda: len(set(alert_ids(sub, "reference"))) >= 2 * CYCLES, 90, "the reference alerts")
        settle(sub, "reference", quiet=1.0)
        assert reference.stop() == 0
        want = set(alert_ids(sub, "reference"))
        assert len(want) == 2 * CYCLES

        crashed = Agent(tmp_path / "crashed", "crashed", broker.port)
        agents.append(crashed)
        writer = RotatingWriter(crashed.root / "arm1")
        bursts = [lines[i : i + 10] for i in range(0, len(lines), 10)]
        stop_writing = threading.Event()

        def write() -> None:  # ~20 s of appends and 23 rotations, while the agent is killed
            for k, burst in enumerate(bursts):
                if stop_writing.wait(0.06):
                    return
                writer.append(burst)
                if k % 13 == 12:
                    writer.rotate()

        thread = threading.Thread(target=write, name="log-writer")
        need = started(crashed) + 1
        crashed.start()
        thread.start()
        kills = 0
        try:
            for kill in range(20):
                if kill % 2:  # half the kills once running, half inside start-up
                    try:
                        wait_until(lambda n=need: started(crashed) >= n, 30, "the agent started")
                    except AssertionError:
                        tail = (crashed.root / "agent.out").read_text()[-3000:]
                        raise AssertionError(f"start {kill + 1} never got going; log tail:\n{tail}") from None
                time.sleep(rng.uniform(0.0, 0.6))  # reading, scoring, committing or idle
                crashed.kill()
                kills += 1
                time.sleep(rng.choice([0.0, 0.0, rng.uniform(0.1, 1.0)]))  # down: lines, rotations
                need = started(crashed) + 1
                crashed.start()
        finally:
            stop_writing.set() if kills < 20 else None
            thread.join()
        assert kills == 20
        assert writer.rotations >= 12
        wait_until(
            lambda: len(set(alert_ids(sub, "crashed"))) >= len(want), 120, "the crashed agent's alerts"
        )
        wait_until(lambda: started(crashed) >= need, 30, "the last start")
        settle(sub, "crashed")
        assert crashed.stop() == 0
        got = set(alert_ids(sub, "crashed"))
    assert started(crashed) >= 10, f"only {started(crashed)} of 21 starts got going (seed {seed})"
    assert sorted(want - got) == [], "alerts missing after SIGKILLs"
    assert sorted(got - want) == [], "alerts that an uninterrupted run does not raise"


@pytest.mark.slow
def test_backlog_alerts_are_flagged_replayed_and_live_ones_are_not(
    tmp_path: Path, broker: Broker, agents: list[Agent]
) -> None:
    """Lines already in the log at start are caught up with replayed=true; lines written later are live."""
    with Collector(broker.port, ("robotpm/v1/+/+/alerts",), client_id="replay-observer") as sub:
        agent = Agent(tmp_path / "a", "replay", broker.port)
        agents.append(agent)
        writer = RotatingWriter(agent.root / "arm1")
        writer.append(cycle_lines(0, 50))
        writer.rotate()
        writer.append(cycle_lines(50, 100))
        agent.start()
        wait_until(lambda: len(alert_ids(sub, "replay")) >= 200, 60, "the backlog alerts")
        settle(sub, "replay", quiet=1.0)
        backlog = alerts(sub, "replay")
        writer.append(cycle_lines(100, 105))
        wait_until(lambda: len(alert_ids(sub, "replay")) >= 210, 30, "the live alerts")
        assert agent.stop() == 0
        live = alerts(sub, "replay")[len(backlog) :]
    assert backlog
    assert all(a["replayed"] is True for a in backlog)
    assert live
    assert all(a["replayed"] is False for a in live)


@pytest.mark.slow
def test_two_streams_in_one_agent_keep_their_own_positions_across_sigkill(
    tmp_path: Path, broker: Broker, agents: list[Agent]
) -> None:
    """Two arms on one controller: each stream's alerts are complete and its own, also after a SIGKILL."""
    with Collector(broker.port, ("robotpm/v1/+/+/alerts",), client_id="streams-observer") as sub:
        agent = Agent(tmp_path / "two", "two", broker.port, streams=("arm1", "arm2"))
        agents.append(agent)
        one = RotatingWriter(agent.root / "arm1")
        two = RotatingWriter(agent.root / "arm2")
        one.append(cycle_lines(0, 30))
        two.append(cycle_lines(0, 10))
        agent.start()
        wait_until(lambda: len(alert_ids(sub, "two")) >= 80, 60, "the first alerts")
        agent.kill()
        one.rotate()
        one.append(cycle_lines(30, 40))
        two.append(cycle_lines(10, 40))
        agent.start()
        wait_until(lambda: len(set(alert_ids(sub, "two"))) >= 160, 60, "all alerts")
        settle(sub, "two", quiet=1.0)
        assert agent.stop() == 0
        received = alerts(sub, "two")
    per_stream: dict[str, set[int]] = {"arm1": set(), "arm2": set()}
    for a in received:
        per_stream[str(a["stream"])].add(int(a["window"]["index"]))  # type: ignore[index]
    ids = {a["event_id"] for a in received}
    assert len(ids) == 160
    assert len(per_stream["arm1"]) == 80
    assert len(per_stream["arm2"]) == 80
