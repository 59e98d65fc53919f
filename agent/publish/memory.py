"""The in-memory twin of the MQTT transport: records what was sent and acknowledges on demand."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import PublishError
from agent.seams import OutboundMessage


@dataclass(frozen=True, slots=True)
class SentMessage:
    """One hand-over to the (pretend) broker; ``dup`` marks a resend after a reconnect."""

    token: int
    message: OutboundMessage
    dup: bool


class InMemoryTransport:
    """A `agent.seams.Transport` without a network.

    With ``auto_ack`` every message is acknowledged as soon as it is sent; without
    it, tests call `ack`/`ack_all`. `drop_connection` loses the link (un-acked
    messages stay in flight, as in paho); `reconnect` resends them with ``dup``.
    """

    def __init__(
        self,
        *,
        auto_ack: bool = True,
        connected: bool = True,
        max_inflight: int = 1000,
        max_payload: int | None = None,
    ) -> None:
        self.auto_ack = auto_ack
        self.max_inflight = max_inflight
        self.max_payload = max_payload
        self.sent: list[SentMessage] = []
        self.farewell: list[OutboundMessage] = []
        self.started = False
        self.stopped = False
        self._connected = connected
        self._next = 0
        self._inflight: dict[int, OutboundMessage] = {}
        self._acks: list[int] = []
        self._rejected: list[int] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Mark the transport started."""
        self.started = True

    @property
    def connected(self) -> bool:
        """Whether the pretend link is up."""
        return self._connected

    def send(self, message: OutboundMessage) -> int | None:
        """Record the message; None while disconnected or when the window is full.

        Raises `PublishError` for a payload over ``max_payload`` (a message no broker would take).
        """
        if self.max_payload is not None and len(message.payload) > self.max_payload:
            raise PublishError(f"payload of {len(message.payload)} bytes exceeds {self.max_payload}")
        with self._lock:
            if not self._connected or len(self._inflight) >= self.max_inflight:
                return None
            self._next = self._next % 65535 + 1
            token = self._next
            self.sent.append(SentMessage(token, message, dup=False))
            if self.auto_ack:
                self._acks.append(token)
            else:
                self._inflight[token] = message
            return token

    def take_acks(self) -> list[int]:
        """Tokens acknowledged since the last call."""
        with self._lock:
            acks, self._acks = self._acks, []
            return acks

    def ack(self, token: int) -> None:
        """Acknowledge one in-flight message."""
        with self._lock:
            if self._inflight.pop(token, None) is not None:
                self._acks.append(token)

    def reject(self, token: int) -> None:
        """Answer one in-flight message with a failure reason code (MQTT 5), e.g. quota exceeded."""
        with self._lock:
            if self._inflight.pop(token, None) is not None:
                self._rejected.append(token)

    def take_rejected(self) -> list[int]:
        """Tokens rejected since the last call."""
        with self._lock:
            rejected, self._rejected = self._rejected, []
            return rejected

    def ack_all(self) -> int:
        """Acknowledge every in-flight message; returns how many."""
        with self._lock:
            tokens = list(self._inflight)
            self._inflight.clear()
            self._acks.extend(tokens)
            return len(tokens)

    @property
    def inflight(self) -> int:
        """Messages sent and not yet acknowledged."""
        return len(self._inflight)

    def drop_connection(self) -> None:
        """Lose the link; in-flight messages wait for `reconnect`."""
        self._connected = False

    def reconnect(self) -> None:
        """Bring the link back and resend in-flight messages with ``dup``."""
        with self._lock:
            self._connected = True
            for token, message in self._inflight.items():
                self.sent.append(SentMessage(token, message, dup=True))
            if self.auto_ack:
                self._acks.extend(self._inflight)
                self._inflight.clear()

    def stop(self, farewell: Sequence[OutboundMessage] = ()) -> None:
        """Record the farewell messages and stop."""
        self.farewell.extend(farewell)
        self.stopped = True
        self._connected = False

    def messages(self, kind: str | None = None) -> list[OutboundMessage]:
        """Messages sent (first hand-overs only), optionally of one kind."""
        return [s.message for s in self.sent if not s.dup and (kind is None or s.message.kind == kind)]
