"""The whole agent as a subprocess, a real Mosquitto, and a separate MQTT subscriber.

Lines appended to a log file come out as alert events at a subscriber that knows
nothing but the topic tree.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.agent_config import agent_config
from tests.agent_process import spawn_agent
from tests.models import write_linear_model
from tests.mosquitto import Broker


class Subscriber:
    """A plain paho subscriber on the fleet's topics; collects (topic, payload) pairs."""

    def __init__(self, broker: Broker, topic: str = "robotpm/v1/#") -> None:
        self.messages: queue.Queue[tuple[str, dict[str, Any], bool]] = queue.Queue()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="it-subscriber", protocol=mqtt.MQTTv5
        )
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, json.loads(m.payload), m.retain))
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=1)
        # A persistent session: the broker keeps QoS 1 messages for it while it is away.
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 300
        self.client.connect(broker.host, broker.port, clean_start=False, properties=properties)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def wait_for(self, predicate: Any, timeout_s: float = 20.0) -> list[tuple[str, dict[str, Any], bool]]:
        """Collect messages until one satisfies `predicate`; return all collected so far."""
        seen: list[tuple[str, dict[str, Any], bool]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                item = self.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            seen.append(item)
            if predicate(item):
                return seen
        raise AssertionError(
            f"no matching message within {timeout_s}s; got {[(t, p.get('state')) for t, p, _ in seen]}"
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(name="subscriber")
def _subscriber(broker: Broker) -> Iterator[Subscriber]:
    subscriber = Subscriber(broker)
    yield subscriber
    subscriber.close()


def start_agent(workdir: Path, broker: Broker, watch: str = "auto") -> subprocess.Popen[bytes]:
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    write_linear_model(workdir / "bundled")
    config = workdir / "config.toml"
    config.write_text(
        agent_config(
            port=broker.port,
            robot_id="it-robot",
            site="it",
            heartbeat_interval_s=0.5,
            model={"check_interval_s": 0.2},
            mqtt={"keepalive_s": 5},
            ingest={"watch": watch, "poll_interval_s": 0.05},
            policy={"on_delay_windows": 2, "off_delay_windows": 2},
        )
    )
    return spawn_agent(config, workdir / "agent.log")


def stop_agent(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    return process.wait(timeout=30)


def append(path: Path, rows: list[float], start: int) -> None:
    new = not path.exists()
    with path.open("a") as handle:
        if new:
            handle.write("ts,J1,T1\n")
        for i, current in enumerate(rows):
            handle.write(f"{start + i}.0,{current},40.0\n")
            handle.flush()


@pytest.mark.parametrize("watch", ["auto", "poll"])
def test_lines_appended_to_a_log_arrive_as_an_alert_at_a_separate_subscriber(
    tmp_path: Path, broker: Broker, subscriber: Subscriber, watch: str
) -> None:
    """High current appended to the log is raised as an alert on robotpm/v1/it/it-robot/alerts."""
    agent = start_agent(tmp_path, broker, watch)
    try:
        subscriber.wait_for(lambda m: m[0].endswith("/status") and m[1]["state"] == "online")
        log = tmp_path / "logs" / "arm1.csv"
        append(log, [0.1] * 10, 0)
        append(log, [1.0] * 10, 10)
        seen = subscriber.wait_for(lambda m: m[0].endswith("/alerts") and m[1]["state"] == "raised")
        topic, alert, retained = seen[-1]
        assert "robotpm/v1/it/it-robot/alerts" == topic
        assert not retained
        assert ("it-robot", "arm1", "critical") == (alert["robot_id"], alert["stream"], alert["severity"])
        assert str(log) == alert["window"]["source_file"]
        assert "1.1" == alert["schema_version"]
        append(log, [0.1] * 10, 20)
        subscriber.wait_for(lambda m: m[0].endswith("/alerts") and m[1]["state"] == "cleared")
    finally:
        assert 0 == stop_agent(agent)
    final = subscriber.wait_for(lambda m: m[0].endswith("/status") and m[1]["state"] == "offline")
    assert final[-1][2] is False or final[-1][1]["reason"] == "stopped"


def test_alerts_raised_while_the_broker_is_down_arrive_after_it_returns(
    tmp_path: Path, broker: Broker, subscriber: Subscriber
) -> None:
    """With the broker stopped, alerts wait in the outbox and are delivered once it is back."""
    agent = start_agent(tmp_path, broker)
    try:
        subscriber.wait_for(lambda m: m[0].endswith("/status") and m[1]["state"] == "online")
        broker.stop()  # SIGTERM: mosquitto saves the subscriber's persistent session
        log = tmp_path / "logs" / "arm1.csv"
        append(log, [0.1] * 10 + [1.0] * 10, 0)
        time.sleep(1.0)
        broker.start()
        subscriber.wait_for(lambda m: m[0].endswith("/alerts") and m[1]["state"] == "raised", timeout_s=30)
    finally:
        assert 0 == stop_agent(agent)
