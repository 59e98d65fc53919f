"""Test-side MQTT peers: a scripted fake broker (paho's own test style) and a recording subscriber.

`FakeBroker` speaks just enough MQTT 3.1.1 / 5 on a loopback socket to script what
a real broker would never do on demand: drop the connection right before a
PUBACK, or refuse MQTT 5 like a 3.1.1-only broker. It records every PUBLISH with
its DUP flag and packet id.

`Collector` is a real paho subscriber (persistent MQTT 5 session, QoS 1) that
records what a maintenance system would receive.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.mosquitto import Broker, require_mosquitto

Decision = Literal["ack", "drop", "ignore", "reject"]


class BrokerPool:
    """Makes real mosquitto brokers with extra config and stops every one of them at the end.

    (conftest's ``broker_factory`` does not track the brokers it makes: the dataclass
    ``__init__`` of ``Broker`` never calls the subclass's ``__post_init__``.)
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._made: list[Broker] = []

    def make(self, name: str, extra_config: str = "", port: int | None = None) -> Broker:
        """A broker (not started) in ``<root>/<name>``."""
        require_mosquitto()
        kwargs: dict[str, Any] = {} if port is None else {"port": port}
        broker = Broker(workdir=self._root / name, extra_config=extra_config, **kwargs)
        self._made.append(broker)
        return broker

    def close(self) -> None:
        """Stop every broker made here."""
        for broker in self._made:
            broker.stop()


@dataclass(frozen=True)
class Publish:
    """One PUBLISH the fake broker received."""

    connection: int
    topic: str
    mid: int
    qos: int
    dup: bool
    retain: bool
    payload: bytes


@dataclass
class FakeBroker:
    """A scripted broker on 127.0.0.1; `decide(publish)` says what to do with each QoS 1 PUBLISH.

    With ``v5=False`` it answers an MQTT 5 CONNECT the way a 3.1.1-only broker does
    (CONNACK return code 1, "unacceptable protocol version", then close).
    """

    decide: Callable[[Publish], Decision] = lambda p: "ack"
    v5: bool = True
    publishes: list[Publish] = field(default_factory=list)
    connects: list[int] = field(default_factory=list)  # protocol level of each CONNECT
    port: int = 0

    def __post_init__(self) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(4)
        self._server.settimeout(0.1)
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-broker", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> FakeBroker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()

    def _serve(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            n += 1
            with conn:
                conn.settimeout(0.1)
                with contextlib.suppress(ConnectionError, OSError):
                    self._session(conn, n)

    def _session(self, conn: socket.socket, number: int) -> None:
        level = 4
        while not self._stop.is_set():
            packet = _read_packet(conn, self._stop)
            if packet is None:
                return
            header, body = packet
            kind = header >> 4
            if kind == 1:  # CONNECT
                name_len = struct.unpack("!H", body[:2])[0]
                level = body[2 + name_len]
                with self._lock:
                    self.connects.append(level)
                if level == 5 and not self.v5:
                    conn.sendall(b"\x20\x02\x00\x01")
                    return
                conn.sendall(b"\x20\x03\x00\x00\x00" if level == 5 else b"\x20\x02\x00\x00")
            elif kind == 3:  # PUBLISH
                qos = (header >> 1) & 3
                topic_len = struct.unpack("!H", body[:2])[0]
                topic = body[2 : 2 + topic_len].decode()
                pos = 2 + topic_len
                mid = 0
                if qos:
                    mid = struct.unpack("!H", body[pos : pos + 2])[0]
                    pos += 2
                if level == 5:
                    plen, used = _varint(body, pos)
                    pos += used + plen
                record = Publish(
                    number, topic, mid, qos, bool(header & 8), bool(header & 1), bytes(body[pos:])
                )
                with self._lock:
                    self.publishes.append(record)
                decision = self.decide(record) if qos else "ignore"
                if decision == "drop":
                    return
                if decision == "ack":
                    conn.sendall(b"\x40\x02" + struct.pack("!H", mid))
                elif decision == "reject":  # MQTT 5 PUBACK with reason 0x97 "quota exceeded"
                    conn.sendall(b"\x40\x03" + struct.pack("!H", mid) + b"\x97")
            elif kind == 12:  # PINGREQ
                conn.sendall(b"\xd0\x00")
            elif kind == 14:  # DISCONNECT
                return

    def received(self, topic_suffix: str) -> list[Publish]:
        """Publishes whose topic ends with `topic_suffix`."""
        with self._lock:
            return [p for p in self.publishes if p.topic.endswith(topic_suffix)]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift, used = 0, 0, 0
    while True:
        byte = data[pos + used]
        used += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, used


def _read_exact(conn: socket.socket, n: int, stop: threading.Event) -> bytes | None:
    chunks = b""
    while len(chunks) < n:
        if stop.is_set():
            return None
        try:
            chunk = conn.recv(n - len(chunks))
        except TimeoutError:
            continue
        if not chunk:
            return None
        chunks += chunk
    return chunks


def _read_packet(conn: socket.socket, stop: threading.Event) -> tuple[int, bytes] | None:
    first = _read_exact(conn, 1, stop)
    if first is None:
        return None
    length, shift = 0, 0
    while True:
        byte = _read_exact(conn, 1, stop)
        if byte is None:
            return None
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    body = _read_exact(conn, length, stop) if length else b""
    if body is None:
        return None
    return first[0], body


@dataclass(frozen=True)
class Received:
    """One message a `Collector` received."""

    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


class Collector:
    """A persistent MQTT 5 subscriber (QoS 1) that records everything it receives."""

    def __init__(
        self,
        port: int,
        topics: tuple[str, ...],
        *,
        client_id: str = "test-collector",
        host: str = "127.0.0.1",
        tls: Any | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self._topics = topics
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.reconnect_delay_set(1, 1)
        if tls is not None:
            self._client.tls_set_context(tls)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *a: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self._client.connect_async(host, port, keepalive=5, clean_start=False, properties=props)

    def __enter__(self) -> Collector:
        self._client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("collector did not subscribe")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))

    def on(self, suffix: str) -> list[Received]:
        """Messages received on topics ending with `suffix`."""
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float) -> bool:
        """Poll until `predicate(self)` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.02)
        return predicate(self)
