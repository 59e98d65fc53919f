"""Delivery through broker outages and agent crashes: nothing is lost, duplicates carry repeated ids.

Outage profiles follow Azure IoT Edge's connectivity tests (off/on minutes × cycles:
5/5×5, 10/10×3, 15/15×3), scaled down to fractions of a second. A publisher
process (Outbox + Delivery + MqttTransport, the agent's delivery path) is killed
with SIGKILL while it holds unacknowledged alerts, and restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import MqttConfig, OutboxConfig
from agent.contract.topics import RobotTopics
from agent.outbox import Outbox
from agent.publish.delivery import Delivery
from agent.publish.mqtt import MqttTransport
from agent.publish.telemetry import presence, presence_message
from agent.seams import OutboundMessage, SystemClock
from agent.state import StateStore
from tests.fake_broker import BrokerPool, Collector, FakeBroker

REPO = Path(__file__).resolve().parent.parent
TOPICS = RobotTopics("site1", "robot1")
KEEPALIVE_S = 5


def alert(i: int) -> OutboundMessage:
    event_id = f"e{i:06d}"
    return OutboundMessage(event_id, "alert", TOPICS.alerts, json.dumps({"event_id": event_id}).encode())


def mqtt_config(port: int) -> MqttConfig:
    return MqttConfig(
        port=port, keepalive_s=KEEPALIVE_S, reconnect_min_s=1, reconnect_max_s=1, max_inflight=20
    )


def event_ids(sub: Collector) -> list[str]:
    return [m.json()["event_id"] for m in sub.on("/alerts")]


@pytest.fixture(name="brokers")
def _brokers(tmp_path: Path) -> Iterator[BrokerPool]:
    pool = BrokerPool(tmp_path / "brokers")
    yield pool
    pool.close()


@pytest.mark.slow
class TestOutageProfiles:
    @pytest.mark.parametrize(
        ("off_s", "on_s", "cycles"),
        [(0.5, 0.5, 5), (1.0, 1.0, 3), (1.5, 1.5, 3)],
        ids=["5/5x5", "10/10x3", "15/15x3"],
    )
    def test_alerts_fired_through_broker_off_on_cycles_all_arrive(
        self, brokers: BrokerPool, tmp_path: Path, off_s: float, on_s: float, cycles: int
    ) -> None:
        """While alerts fire at a steady rate, the broker stops and starts: missing = 0."""
        broker = brokers.make("outage").start()
        outbox = Outbox(StateStore(tmp_path / "state" / "agent.db"), OutboxConfig(), SystemClock())
        transport = MqttTransport(
            mqtt_config(broker.port), robot_id="robot1", site="site1", agent_version="t", clock=SystemClock()
        )
        stop_toggling = threading.Event()

        def toggle() -> None:
            for _ in range(cycles):
                if stop_toggling.wait(on_s):
                    return
                broker.stop()
                time.sleep(off_s)
                broker.start()

        with Collector(broker.port, (TOPICS.alerts,), client_id="outage-sub") as sub:
            transport.start()
            delivery = Delivery(outbox, transport, max_inflight=20)
            toggler = threading.Thread(target=toggle, name="toggler")
            toggler.start()
            sent = 0
            try:
                while toggler.is_alive():  # ~200 alerts/s while the broker goes off and on
                    with outbox.store.transaction() as conn:
                        outbox.enqueue(conn, [alert(sent), alert(sent + 1)])
                    sent += 2
                    delivery.pump()
                    time.sleep(0.01)
                deadline = time.monotonic() + 30
                while outbox.depth() and time.monotonic() < deadline:
                    delivery.pump()
                    time.sleep(0.005)
                expected = {f"e{i:06d}" for i in range(sent)}
                sub.wait_for(lambda s: expected <= set(event_ids(s)), 15)
            finally:
                stop_toggling.set()
                toggler.join()
                transport.stop()
            received = event_ids(sub)
        missing = expected - set(received)
        duplicates = Counter(received) - Counter(set(received))
        assert set() == missing, f"{len(missing)} of {sent} alerts missing"
        assert set(received) <= expected, "only the alerts sent, duplicates carry repeated event_ids"
        assert sum(duplicates.values()) <= 2 * 20 * cycles, "duplicates bounded by the in-flight windows"
        assert 0 == outbox.depth()
        assert transport.connects >= cycles + 1


# -- a publisher process to kill ------------------------------------------------------------


def driver_main(argv: list[str]) -> None:
    """A publisher process: ``<state_dir> <port> <count>`` enqueues count alerts; 0 only drains.

    Prints one JSON line of progress every 20 ms; stops cleanly (retained "offline")
    when the outbox is empty and everything was enqueued.
    """
    state_dir, port, count = Path(argv[0]), int(argv[1]), int(argv[2])
    clock = SystemClock()
    outbox = Outbox(StateStore(state_dir / "agent.db"), OutboxConfig(), clock)
    transport = MqttTransport(
        mqtt_config(port), robot_id="robot1", site="site1", agent_version="t", clock=clock
    )
    transport.start()
    delivery = Delivery(outbox, transport, max_inflight=20)
    enqueued = 0
    last_report = 0.0
    while True:
        if enqueued < count:
            with outbox.store.transaction() as conn:
                outbox.enqueue(conn, [alert(enqueued)])
            enqueued += 1
        delivery.pump()
        now = time.monotonic()
        if now - last_report > 0.02:
            last_report = now
            progress = {
                "enqueued": enqueued,
                "depth": outbox.depth(),
                "inflight": delivery.inflight,
                "connected": transport.connected,
                "delivered": delivery.delivered,
            }
            report(progress)
        if enqueued >= count and outbox.depth() == 0 and count == 0:
            break
        time.sleep(0.002)
    offline = presence_message(TOPICS, presence("robot1", "site1", "offline", "t", reason="stopped"))
    transport.stop([offline])
    report({"done": True})


def report(progress: dict[str, object]) -> None:
    """One progress line in one write: print() writes the newline separately, and the transport's
    log lines (from paho's thread) could land between the two.
    """
    sys.stdout.write(json.dumps(progress) + "\n")
    sys.stdout.flush()


class Driver:
    """The publisher process under test, with its progress lines read in a thread."""

    def __init__(self, state_dir: Path, port: int, count: int) -> None:
        code = "import sys; from tests.test_mqtt_outage import driver_main; driver_main(sys.argv[1:])"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, str(state_dir), str(port), str(count)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.last: dict[str, object] = {}
        self._reader = threading.Thread(target=self._read, name="driver-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(b"{"):  # the transport's own log lines go to stdout too
                self.last = json.loads(line)

    def wait_until(self, key: str, check: object, timeout: float = 20.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.last
            if callable(check) and key in last and check(last[key]):
                return last
            time.sleep(0.02)
        raise TimeoutError(f"driver never reached {key}: last progress {self.last}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._reader.join(timeout=5)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


def wait_online(driver: Driver, sub: Collector) -> None:
    """Return once `driver` is connected and `sub` has seen its "online" status."""
    driver.wait_until("connected", bool)
    assert sub.wait_for(lambda s: any(m.json()["state"] == "online" for m in s.on("/status")), 10)


class TestCrashes:
    def test_publisher_killed_during_an_outage_loses_nothing_after_restart(
        self, brokers: BrokerPool, tmp_path: Path
    ) -> None:
        """SIGKILL with alerts in flight and queued during an outage; a restart delivers them all."""
        broker = brokers.make("crash").start()
        total = 300
        with Collector(broker.port, (TOPICS.alerts,), client_id="crash-sub") as sub:
            first = Driver(tmp_path / "state", broker.port, total)
            try:
                first.wait_until("delivered", lambda n: n >= 50)
                broker.stop()
                progress = first.wait_until("enqueued", lambda n: n >= total)
                assert progress["depth"], "un-acknowledged alerts were waiting when it was killed"
            finally:
                first.kill()
            broker.start()
            second = Driver(tmp_path / "state", broker.port, 0)
            assert 0 == second.wait()
            expected = {f"e{i:06d}" for i in range(total)}
            sub.wait_for(lambda s: expected <= set(event_ids(s)), 15)
            received = event_ids(sub)
        assert set() == expected - set(received)
        assert set(received) <= expected

    def test_publisher_killed_with_alerts_in_flight_loses_nothing_after_restart(
        self, brokers: BrokerPool, tmp_path: Path
    ) -> None:
        """SIGKILL while paho holds published-but-unacknowledged alerts: the restart sends them."""
        broker = brokers.make("inflight").start()
        total = 60
        with FakeBroker(decide=lambda p: "ignore") as silent:  # accepts PUBLISH, never answers PUBACK
            first = Driver(tmp_path / "state", silent.port, total)
            try:
                first.wait_until("enqueued", lambda n: n >= total)
                progress = first.wait_until("inflight", lambda n: n >= 20)
                assert total == progress["depth"], "nothing was acknowledged"
            finally:
                first.kill()
            assert len(silent.received("/alerts")) >= 10, "alerts were on the wire, unacknowledged"
        with Collector(broker.port, (TOPICS.alerts,), client_id="inflight-sub") as sub:
            assert 0 == Driver(tmp_path / "state", broker.port, 0).wait()
            expected = {f"e{i:06d}" for i in range(total)}
            sub.wait_for(lambda s: expected <= set(event_ids(s)), 15)
            received = event_ids(sub)
        assert set() == expected - set(received)
        assert len(received) == total

    def test_status_reads_offline_within_one_and_a_half_keepalives_after_sigkill(
        self, brokers: BrokerPool, tmp_path: Path
    ) -> None:
        """The broker publishes the retained last will "offline" once the publisher is killed."""
        broker = brokers.make("lwt").start()
        with Collector(broker.port, (TOPICS.status,), client_id="lwt-sub") as sub:
            driver = Driver(tmp_path / "state", broker.port, 10**9)
            try:
                wait_online(driver, sub)
            finally:
                driver.kill()
            killed_at = time.monotonic()
            assert sub.wait_for(lambda s: s.on("/status")[-1].json()["state"] == "offline", 1.5 * KEEPALIVE_S)
            offline = sub.on("/status")[-1]
        assert offline.at - killed_at <= 1.5 * KEEPALIVE_S
        assert "last will" in offline.json()["reason"]
        with Collector(broker.port, (TOPICS.status,), client_id="late-sub") as late:
            assert late.wait_for(lambda s: bool(s.on("/status")), 5)
            assert (True, "offline") == (
                late.on("/status")[-1].retain,
                late.on("/status")[-1].json()["state"],
            )

    def test_a_frozen_publisher_is_marked_offline_by_keepalive(
        self, brokers: BrokerPool, tmp_path: Path
    ) -> None:
        """SIGSTOP keeps the socket open (like a dead link): the broker's keepalive check sends the will.

        The spec says 1.5 x keepalive of silence. Mosquitto 2.0.11 checks coarsely: a plain
        paho client frozen the same way was dropped after 9.8 s at keepalive 5 (about 2x),
        so the bound here is 2.5 x keepalive. SIGKILL (a closed socket) is immediate.
        """
        broker = brokers.make("frozen").start()
        with Collector(broker.port, (TOPICS.status,), client_id="frozen-sub") as sub:
            driver = Driver(tmp_path / "state", broker.port, 10**9)
            try:
                wait_online(driver, sub)
                driver.process.send_signal(signal.SIGSTOP)
                frozen_at = time.monotonic()
                assert sub.wait_for(lambda s: s.on("/status")[-1].json()["state"] == "offline", 30)
                offline = sub.on("/status")[-1]
            finally:
                driver.process.send_signal(signal.SIGCONT)
                driver.kill()
        waited = offline.at - frozen_at
        assert KEEPALIVE_S <= waited <= 2.5 * KEEPALIVE_S
