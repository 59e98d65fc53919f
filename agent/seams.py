"""The seams of the agent: small Protocols, each with a real implementation and an in-memory twin.

The daemon is written against these, so it can be tested without a broker, a
clock or files, and is also tested against the real ones.

Lifecycle rules (the daemon keeps them, implementations may rely on them):

* ``Transport``: ``start()`` once, then any number of ``send()`` / ``take_acks()``
  from the daemon's thread, then ``stop()`` once; nothing is called after ``stop()``.
* ``Scorer``: immutable once built; ``score()`` may be called from one thread at a time.
* ``Clock``: pure.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

MessageKind = Literal["alert", "status", "heartbeat", "model", "drift"]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A message bound for the broker, as stored in the outbox.

    ``key`` is stable across replays (an alert's ``event_id``), so a message enqueued
    twice for the same input is stored once.
    """

    key: str
    kind: MessageKind
    topic: str
    payload: bytes
    qos: Literal[0, 1] = 1
    retain: bool = False


class Transport(Protocol):
    """Hands messages to a broker and reports which ones it acknowledged.

    ``send`` never blocks on the network: it returns a token when the message was
    taken (it will be acknowledged later, or resent by the transport itself after a
    reconnect), or None when the transport cannot take it now (disconnected and
    not queueing, or the in-flight window is full); the caller retries later.
    """

    def start(self) -> None:
        """Begin connecting in the background."""

    def send(self, message: OutboundMessage) -> int | None:
        """Take one message; return a token for its acknowledgement, or None to retry later."""

    def take_acks(self) -> list[int]:
        """Tokens acknowledged since the last call (PUBACK received for QoS 1)."""

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up now."""

    def stop(self, farewell: Sequence[OutboundMessage] = ()) -> None:
        """Send `farewell` (e.g. a retained "offline") best effort, then disconnect cleanly."""


class Scorer(Protocol):
    """Scores feature vectors with one model."""

    def score(self, features: npt.NDArray[np.float64]) -> Mapping[str, npt.NDArray[np.float64]]:
        """Outputs by name for a batch of shape ``(n, n_features)``; each of shape ``(n, k)``."""


class Clock(Protocol):
    """Wall and monotonic time, so tests can drive time."""

    def wall(self) -> float:
        """Seconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def wall(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to: the in-memory twin of `SystemClock`."""

    __slots__ = ("_mono", "_wall")

    def __init__(self, wall: float = 1_700_000_000.0) -> None:
        self._wall = wall
        self._mono = 0.0

    def wall(self) -> float:
        """Seconds since the epoch."""
        return self._wall

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self._wall += seconds
        self._mono += seconds
