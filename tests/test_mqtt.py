"""The MQTT transport against a real Mosquitto and a scripted fake broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import MqttConfig, OutboxConfig
from agent.contract.topics import RobotTopics
from agent.outbox import Outbox
from agent.publish.delivery import Delivery
from agent.publish.mqtt import MqttTransport, read_credentials
from agent.publish.telemetry import presence, presence_message
from agent.seams import OutboundMessage, SystemClock
from agent.state import StateStore
from tests.fake_broker import BrokerPool, Collector, FakeBroker, Publish
from tests.mosquitto import Broker

TOPICS = RobotTopics("site1", "robot1")


def config(port: int, **extra: object) -> MqttConfig:
    return MqttConfig.model_validate(
        {"port": port, "keepalive_s": 5, "reconnect_min_s": 1, "reconnect_max_s": 2, **extra}
    )


def transport(cfg: MqttConfig) -> MqttTransport:
    return MqttTransport(cfg, robot_id="robot1", site="site1", agent_version="0.1.0", clock=SystemClock())


def alert(i: int) -> OutboundMessage:
    return OutboundMessage(
        key=f"e{i:05d}",
        kind="alert",
        topic=TOPICS.alerts,
        payload=json.dumps({"event_id": f"e{i:05d}"}).encode(),
    )


def deliver_one(outbox: Outbox, mqtt: MqttTransport, **options: float) -> Delivery:
    """Enqueue alert 1 and pump a `Delivery` over `mqtt` until the outbox is empty; the delivery."""
    delivery = Delivery(outbox, mqtt, **options)
    outbox.enqueue_now([alert(1)])
    pump_until(delivery, lambda: outbox.depth() == 0)
    return delivery


def pump_until(delivery: Delivery, done: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        delivery.pump()
        time.sleep(0.005)


@pytest.fixture(name="brokers")
def _brokers(tmp_path: Path) -> Iterator[BrokerPool]:
    pool = BrokerPool(tmp_path / "brokers")
    yield pool
    pool.close()


@pytest.fixture(name="outbox")
def _outbox(tmp_path: Path) -> Outbox:
    return Outbox(StateStore(tmp_path / "state" / "agent.db"), OutboxConfig(), SystemClock())


class TestAgainstMosquitto:
    def test_alerts_reach_a_subscriber_and_rows_are_deleted_on_puback(
        self, broker: Broker, outbox: Outbox
    ) -> None:
        """Every enqueued alert arrives once, in order, and the outbox empties."""
        with Collector(broker.port, (TOPICS.alerts,)) as sub:
            mqtt = transport(config(broker.port))
            mqtt.start()
            try:
                delivery = Delivery(outbox, mqtt, max_inflight=20)
                outbox.enqueue_now([alert(i) for i in range(200)])
                pump_until(delivery, lambda: outbox.depth() == 0)
                assert sub.wait_for(lambda s: len(s.on("/alerts")) >= 200, 10)
            finally:
                mqtt.stop()
        assert [f"e{i:05d}" for i in range(200)] == [m.json()["event_id"] for m in sub.on("/alerts")]
        assert 200 == delivery.delivered

    def test_retained_online_on_connect_and_explicit_offline_on_clean_stop(self, broker: Broker) -> None:
        """Status reads "online" while connected and a retained "offline" after stop(farewell)."""
        mqtt = transport(config(broker.port))
        mqtt.start()
        with Collector(broker.port, (TOPICS.status,), client_id="status-1") as sub:
            assert sub.wait_for(lambda s: any(m.json()["state"] == "online" for m in s.on("/status")), 10)
        offline = presence_message(TOPICS, presence("robot1", "site1", "offline", "0.1.0", reason="stopped"))
        mqtt.stop([offline])
        with Collector(broker.port, (TOPICS.status,), client_id="status-2") as late:
            assert late.wait_for(lambda s: bool(s.on("/status")), 5)
            last = late.on("/status")[-1]
        assert (True, "offline", "stopped") == (last.retain, last.json()["state"], last.json()["reason"])

    def test_session_persists_with_a_fixed_client_id(self, brokers: BrokerPool) -> None:
        """The client id is robotpm-<robot>, and a reconnect finds its MQTT 5 session present."""
        broker = brokers.make("b").start()
        mqtt = transport(config(broker.port))
        assert "robotpm-robot1" == mqtt.client_id
        mqtt.start()
        deadline = time.monotonic() + 10
        while not mqtt.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        broker.stop()
        broker.start()
        while mqtt.connects < 2 and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        mqtt.stop()
        assert (2, "5") == (mqtt.connects, mqtt.protocol_in_use)
        assert mqtt.last_session_present

    def test_the_socket_has_tcp_nodelay(self, broker: Broker) -> None:
        """Nagle is off on the client socket (paho never sets TCP_NODELAY: 40 ms spikes)."""
        import socket

        mqtt = transport(config(broker.port))
        mqtt.start()
        try:
            deadline = time.monotonic() + 10
            while not mqtt.connected and time.monotonic() < deadline:
                time.sleep(0.02)
            sock = mqtt._client.socket()
            assert sock is not None
            assert 0 != sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            mqtt.stop()

    @pytest.mark.parametrize(("will_delay_s", "flickers"), [(0, True), (5, False)])
    def test_a_short_link_loss_flaps_presence_only_without_a_will_delay(
        self, broker: Broker, will_delay_s: int, flickers: bool
    ) -> None:
        """With will_delay_s, a link that is back within the delay sends no "offline"."""
        import socket

        mqtt = transport(config(broker.port, will_delay_s=will_delay_s))
        mqtt.start()
        with Collector(broker.port, (TOPICS.status,), client_id=f"flap-{will_delay_s}") as sub:
            try:
                assert sub.wait_for(lambda s: any(m.json()["state"] == "online" for m in s.on("/status")), 10)
                sock = mqtt._client.socket()
                assert sock is not None
                sock.shutdown(socket.SHUT_RDWR)  # the link drops without a DISCONNECT
                deadline = time.monotonic() + 10
                while mqtt.connects < 2 and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert 2 == mqtt.connects
                time.sleep(0.5)
            finally:
                mqtt.stop()
            states = [m.json()["state"] for m in sub.on("/status")]
        assert flickers == ("offline" in states[:-1])

    def test_credentials_come_from_a_file_or_the_environment_never_config(self, tmp_path: Path) -> None:
        """A credentials file wins over the environment; no file and no variable means anonymous."""
        creds = tmp_path / "mqtt"
        creds.write_text("robot1:s3cret\n")
        env = {"ROBOTPM_MQTT_USERNAME": "envuser", "ROBOTPM_MQTT_PASSWORD": "envpass"}
        assert ("robot1", "s3cret") == read_credentials(config(1883, credentials_file=str(creds)), env)
        assert ("envuser", "envpass") == read_credentials(config(1883), env)
        assert None is read_credentials(config(1883), {})

    def test_password_protected_broker_accepts_the_credentials_file(
        self, brokers: BrokerPool, tmp_path: Path, outbox: Outbox, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With allow_anonymous false, the file's username:password connects and is never logged."""
        passwd = tmp_path / "passwd"
        passwd.write_text("robot1:s3cret-pw\n")
        import subprocess

        subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True)
        broker = brokers.make("pw", f"allow_anonymous false\npassword_file {passwd}\n").start()
        anonymous = transport(config(broker.port, client_id="anonymous"))
        anonymous.start()
        time.sleep(1.0)
        anonymous.stop()
        assert (0, "Not authorized") == (anonymous.connects, anonymous.last_error)
        creds = tmp_path / "creds"
        creds.write_text("robot1:s3cret-pw\n")
        mqtt = transport(config(broker.port, credentials_file=str(creds)))
        mqtt.start()
        try:
            deliver_one(outbox, mqtt)
        finally:
            mqtt.stop()
        out = capsys.readouterr()
        assert "s3cret-pw" not in out.out + out.err


class TestScriptedBroker:
    def test_connection_dropped_before_puback_resends_with_dup_and_deletes_the_row_once(
        self, outbox: Outbox
    ) -> None:
        """The broker drops the link before acknowledging an alert: paho resends it with DUP set."""
        dropped: list[Publish] = []

        def decide(p: Publish) -> str:
            if p.topic.endswith("/alerts") and not dropped:
                dropped.append(p)
                return "drop"
            return "ack"

        with FakeBroker(decide=decide) as fake:  # type: ignore[arg-type]
            mqtt = transport(config(fake.port))
            mqtt.start()
            try:
                delivery = deliver_one(outbox, mqtt)
                for _ in range(20):  # any late duplicate ack would show up here
                    delivery.pump()
                    time.sleep(0.01)
            finally:
                mqtt.stop()
            sent = fake.received("/alerts")
        assert [(False, 1), (True, 2)] == [(p.dup, p.connection) for p in sent]
        assert sent[0].mid == sent[1].mid
        assert sent[0].payload == sent[1].payload
        assert 1 == delivery.delivered

    def test_a_puback_with_a_failure_reason_keeps_the_row_until_a_later_publish_succeeds(
        self, outbox: Outbox
    ) -> None:
        """MQTT 5 reason code 0x97 (quota exceeded) is not an acknowledgement: the alert is sent again."""
        answers = iter(["reject", "ack"])

        def decide(p: Publish) -> str:
            return next(answers) if p.topic.endswith("/alerts") else "ack"

        with FakeBroker(decide=decide) as fake:  # type: ignore[arg-type]
            mqtt = transport(config(fake.port))
            mqtt.start()
            try:
                delivery = deliver_one(outbox, mqtt, reject_retry_s=0.2)
            finally:
                mqtt.stop()
            sent = fake.received("/alerts")
        assert 2 == len(sent)
        assert (1, 1) == (delivery.rejected, delivery.delivered)

    def test_a_broker_that_refuses_mqtt5_is_spoken_to_in_3_1_1(self, outbox: Outbox) -> None:
        """Protocol = "auto" falls back to MQTT 3.1.1 when the broker refuses version 5."""
        with FakeBroker(v5=False) as fake:
            mqtt = transport(config(fake.port, protocol="auto"))
            mqtt.start()
            try:
                deliver_one(outbox, mqtt)
            finally:
                mqtt.stop()
            assert [5, 4] == fake.connects[:2]
        assert "3.1.1" == mqtt.protocol_in_use
