"""The MQTT transport: paho-mqtt 2.x behind the `agent.seams.Transport` protocol.

What it does, and why:

* A fixed client id per robot (``config.client_id`` or ``robotpm-<robot_id>``).
* MQTT 5 with ``clean_start=False`` and a Session Expiry Interval, so the broker
  keeps the session across reconnects. With ``protocol = "auto"`` a broker that
  answers CONNACK "unsupported protocol version" is retried with MQTT 3.1.1
  (``clean_session=False``), the way paho itself downgrades 3.1.1 → 3.1.
* TLS with certificate and host-name verification (never disabled), optional
  client certificates; username/password from ``credentials_file`` or the
  environment, never from config.toml and never logged (the password is registered
  with `agent.logs.register_secret`, so even a stray mention of it is masked).
  Credentials without TLS to a broker off this machine are logged as
  ``mqtt_credentials_without_tls``, or refused (`ConfigError` on ``agent.mqtt.tls``)
  with ``plaintext_credentials = "refuse"``, which the prod profile sets; a broker on
  the loopback interface (a local bridge) is exempt.
* A retained last will "offline" on ``…/status``, a retained "online" published on
  every connect, and an explicit retained "offline" in `stop` (a clean disconnect
  suppresses the will). With ``will_delay_s`` (MQTT 5) a link that comes back within
  the delay sends no "offline" at all, so presence does not flap.
* Reconnect with exponential back-off in paho's network thread (``loop_start``).
* Bounded in flight: `send` refuses (returns None) while disconnected or when
  ``max_inflight`` messages wait for their PUBACK, so paho's in-memory queue never
  grows; the durable outbox holds the rest.
* ``TCP_NODELAY`` on every socket (paho never sets it: 40 ms Nagle spikes).
* `subscribe` (used for retained model announcements) is renewed on every connect;
  its callbacks run on paho's network thread and must only hand the payload on.
* Delivery is tracked with ``on_publish`` (never ``is_published``, which raises for
  a message queued while offline). A PUBACK with a failure reason code is reported
  by `take_rejected`, not as an acknowledgement.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import PLAINTEXT_CREDENTIALS_REFUSED, MqttConfig, TlsConfig, is_loopback
from agent.contract.errors import ConfigError
from agent.contract.topics import RobotTopics
from agent.errors import PublishError
from agent.logs import register_secret
from agent.publish.telemetry import presence
from agent.seams import Clock, OutboundMessage

log = structlog.get_logger(__name__)

_UNSUPPORTED_PROTOCOL = 0x84
_FAREWELL_TIMEOUT_S = 2.0


def read_credentials(
    config: MqttConfig, environ: dict[str, str] | None = None
) -> tuple[str, str | None] | None:
    """Username and password from the credentials file, else the environment, else None.

    The file holds ``username:password`` on its first line (e.g. a systemd
    credential). Errors name the file, never its content.
    """
    env = dict(os.environ) if environ is None else environ
    if config.credentials_file is not None:
        path = config.credentials_file
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                str(path), "agent.mqtt.credentials_file", f"cannot read: {exc.strerror}"
            ) from None
        first = text.splitlines()[0] if text.strip() else ""
        username, sep, password = first.partition(":")
        if not username:
            raise ConfigError(str(path), "agent.mqtt.credentials_file", "expected 'username:password'")
        register_secret(password)
        return username, (password if sep else None)
    username_env = env.get(config.username_env)
    if username_env:
        register_secret(env.get(config.password_env))
        return username_env, env.get(config.password_env)
    return None


def check_plaintext_credentials(config: MqttConfig, credentials: tuple[str, str | None] | None) -> None:
    """Warn about credentials that would travel without TLS, or refuse them (see the module docstring)."""
    if credentials is None or config.tls is not None or is_loopback(config.host):
        return
    if config.plaintext_credentials == "refuse":
        raise ConfigError("config", "agent.mqtt.tls", PLAINTEXT_CREDENTIALS_REFUSED)
    log.warning(
        "mqtt_credentials_without_tls",
        host=config.host,
        port=config.port,
        hint="set [agent.mqtt.tls]; the prod profile refuses this",
    )


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the TLS handshake fails.

    paho does not close a socket whose handshake failed, so every reconnect to a
    broker with a bad certificate would leak a file descriptor in a long-running agent.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except (ssl.SSLError, OSError):
            self.close()
            raise


class _AgentTlsContext(ssl.SSLContext):
    """A client context that optionally verifies the server against a fixed host name."""

    pinned_hostname: str | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        if self.pinned_hostname:
            kwargs["server_hostname"] = self.pinned_hostname
        return super().wrap_socket(sock, *args, **kwargs)


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """A client TLS context that verifies the server certificate and host name (never disabled)."""
    context = _AgentTlsContext(ssl.PROTOCOL_TLS_CLIENT)
    context.pinned_hostname = tls.server_hostname
    context.sslsocket_class = _ClosingSSLSocket
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    try:
        context.load_verify_locations(cafile=str(tls.ca_file))
        if tls.cert_file is not None:
            context.load_cert_chain(str(tls.cert_file), None if tls.key_file is None else str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(str(tls.ca_file), "agent.mqtt.tls", f"cannot load certificates: {exc}") from None
    return context


class MqttTransport:
    """`agent.seams.Transport` over paho-mqtt; see the module docstring."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        robot_id: str,
        site: str,
        agent_version: str,
        clock: Clock,
        environ: dict[str, str] | None = None,
    ) -> None:
        self._config = config
        self._robot_id = robot_id
        self._site = site
        self._agent_version = agent_version
        self._clock = clock
        self._topics = RobotTopics(site, robot_id)
        self.client_id = config.client_id or f"robotpm-{robot_id}"
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._inflight: set[int] = set()
        self._acks: list[int] = []
        self._rejected: list[int] = []
        self._control_mids: set[int] = set()
        self._early: dict[int, bool] = {}  # mid -> rejected, for PUBACKs that beat publish()'s return
        self._control_acked = threading.Condition(self._lock)
        self._subscriptions: dict[str, Callable[[bytes], None]] = {}
        self._started = False
        self.connects = 0
        self.disconnects = 0
        self.protocol_in_use = "5" if config.protocol in ("auto", "5") else "3.1.1"
        self.last_error = ""
        self.last_session_present = False

        v5 = self.protocol_in_use == "5"
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else False,
            reconnect_on_failure=True,
        )
        client = self._client
        client.max_inflight_messages_set(config.max_inflight)
        # Room for the in-flight window plus presence messages; the outbox holds everything else.
        client.max_queued_messages_set(config.max_inflight + 8)
        client.reconnect_delay_set(
            min_delay=max(1, round(config.reconnect_min_s)),
            max_delay=max(1, round(config.reconnect_max_s)),
        )
        offline = presence(robot_id, site, "offline", agent_version, reason="connection lost (last will)")
        will_properties: Properties | None = None
        if v5 and config.will_delay_s:
            # A reconnect within the delay (same session) cancels the will: no offline/online flicker.
            will_properties = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            will_properties.WillDelayInterval = config.will_delay_s
        client.will_set(
            self._topics.status,
            offline.model_dump_json().encode(),
            qos=1,
            retain=True,
            properties=will_properties,
        )
        if config.tls is not None:
            client.tls_set_context(tls_context(config.tls))
        credentials = read_credentials(config, environ)
        check_plaintext_credentials(config, credentials)
        if credentials is not None:
            client.username_pw_set(*credentials)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_message = self._on_message

    # -- Transport --------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting in paho's network thread; reconnects with back-off forever."""
        if self._started:
            return
        properties: Properties | None = None
        if self.protocol_in_use == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self._config.session_expiry_s
        try:
            self._client.connect_async(
                self._config.host,
                self._config.port,
                keepalive=self._config.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except (ValueError, OSError) as exc:
            raise PublishError(f"cannot connect to {self._config.host}:{self._config.port}: {exc}") from exc
        self._client.loop_start()
        self._started = True
        log.info(
            "mqtt_starting",
            host=self._config.host,
            port=self._config.port,
            client_id=self.client_id,
            tls=self._config.tls is not None,
            protocol=self._config.protocol,
        )

    @property
    def connected(self) -> bool:
        """Whether a CONNACK arrived and the link has not dropped since."""
        return self._connected.is_set()

    @property
    def inflight(self) -> int:
        """Messages handed to paho and not yet acknowledged."""
        with self._lock:
            return len(self._inflight)

    def send(self, message: OutboundMessage) -> int | None:
        """Publish one message; the PUBACK shows up in `take_acks` under the returned token."""
        if not self._connected.is_set():
            return None
        with self._lock:
            if len(self._inflight) >= self._config.max_inflight:
                return None
        try:
            info = self._client.publish(
                message.topic, message.payload, qos=message.qos, retain=message.retain
            )
        except (ValueError, TypeError) as exc:
            raise PublishError(f"cannot publish to {message.topic!r}: {exc}") from exc
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # MQTT_ERR_QUEUE_SIZE and friends: not taken, the outbox row stays and is retried.
            return None
        # NO_CONN: paho keeps the message (QoS 1) and sends it after the reconnect.
        self._track(info.mid, control=False)
        return info.mid

    def take_acks(self) -> list[int]:
        """Tokens (message ids) whose successful PUBACK arrived since the last call."""
        with self._lock:
            acks, self._acks = self._acks, []
            return acks

    def take_rejected(self) -> list[int]:
        """Tokens the broker answered with a failure reason code since the last call."""
        with self._lock:
            rejected, self._rejected = self._rejected, []
            return rejected

    def stop(self, farewell: Sequence[OutboundMessage] = ()) -> None:
        """Publish `farewell` (e.g. a retained "offline"), wait briefly for its PUBACK, disconnect."""
        if not self._started:
            return
        if self._connected.is_set():
            mids: set[int] = set()
            for message in farewell:
                info = self._client.publish(
                    message.topic, message.payload, qos=message.qos, retain=message.retain
                )
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._track(info.mid, control=True)
                    mids.add(info.mid)
            deadline = time.monotonic() + _FAREWELL_TIMEOUT_S
            with self._control_acked:
                while mids & self._control_mids and self._connected.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        log.warning("mqtt_farewell_unacknowledged", messages=len(mids & self._control_mids))
                        break
                    self._control_acked.wait(remaining)
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._started = False
        log.info("mqtt_stopped", client_id=self.client_id)

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Receive messages on `topic` (QoS 1, no wildcards), now if connected and after every connect.

        `callback` gets the payload on paho's network thread: it must not block (hand the
        payload to another thread). An exception it raises is logged and swallowed.
        """
        with self._lock:
            self._subscriptions[topic] = callback
        if self._started:  # while disconnected paho refuses (NO_CONN); the next connect subscribes
            self._client.subscribe(topic, qos=1)

    def _track(self, mid: int, *, control: bool) -> None:
        """Start waiting for the PUBACK of `mid`, unless it already arrived (see `_on_publish`)."""
        with self._control_acked:
            early = self._early.pop(mid, None)
            if early is None:
                (self._control_mids if control else self._inflight).add(mid)
            elif not control:
                (self._rejected if early else self._acks).append(mid)

    # -- paho callbacks (network thread) ---------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.last_error = str(reason_code)
            if (
                reason_code.value == _UNSUPPORTED_PROTOCOL
                and self._config.protocol == "auto"
                and self.protocol_in_use == "5"
            ):
                # The broker speaks 3.1.1 only: downgrade in place, as paho does for 3.1.1 → 3.1.
                client._protocol = MQTTProtocolVersion.MQTTv311
                client._clean_session = False
                self.protocol_in_use = "3.1.1"
                log.warning("mqtt_protocol_fallback", protocol="3.1.1")
            else:
                log.warning("mqtt_connect_refused", reason=str(reason_code))
            return
        self.connects += 1
        self.last_session_present = bool(flags.session_present)
        online = presence(self._robot_id, self._site, "online", self._agent_version, since=self._clock.wall())
        info = client.publish(self._topics.status, online.model_dump_json().encode(), qos=1, retain=True)
        with self._lock:
            self._control_mids.add(info.mid)
        with self._lock:
            topics = list(self._subscriptions)
        for topic in topics:
            client.subscribe(topic, qos=1)
        self._connected.set()
        log.info(
            "mqtt_connected",
            host=self._config.host,
            port=self._config.port,
            protocol=self.protocol_in_use,
            session_present=bool(flags.session_present),
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            callback = self._subscriptions.get(message.topic)
        if callback is None:
            return
        try:
            callback(bytes(message.payload))
        except Exception:  # a subscriber's bug must not kill paho's network thread
            log.exception("mqtt_message_callback_failed", topic=message.topic)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        with self._control_acked:
            self._control_acked.notify_all()
        if was:
            self.disconnects += 1
            log.warning("mqtt_disconnected", reason=str(reason_code))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._control_acked:
            if mid in self._control_mids:
                self._control_mids.discard(mid)
                self._control_acked.notify_all()
                return
            if mid not in self._inflight:
                # paho calls this under its message lock, which publish() has just released:
                # the PUBACK can beat publish()'s return to the caller. `_track` settles it.
                self._early[mid] = reason_code.is_failure
                return
            self._inflight.discard(mid)
            if reason_code.is_failure:
                self._rejected.append(mid)
                log.warning("mqtt_publish_rejected", mid=mid, reason=str(reason_code))
            else:
                self._acks.append(mid)
