"""The in-memory twins of the agent's seams (`agent.seams`), for fast tests of the daemon and its parts.

* `ManualClock` for `Clock`: time moves only when told to (``advance``, or ``sleep``).
* `InMemoryTransport` for `Transport`: records what was sent, acknowledges on demand,
  loses and regains its pretend link, delivers subscribed payloads when told to.
* `FunctionScorer` for `Scorer`: scores with a plain function under a real manifest.
* `InMemoryModels` for `ModelSource`: the test hands out candidates and reads the verdicts.

Nothing here touches the network, onnxruntime or the disk. The real parts are tested too:
these are for the tests that want to drive time, the broker or the models by hand.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.contract.manifest import ModelManifest
from agent.errors import ModelLoadError, PublishError
from agent.seams import FloatArray, ModelRefusal, OutboundMessage, Scorer

# -- time -------------------------------------------------------------------------------------------


class ManualClock:
    """A clock that moves only when told to: the in-memory twin of `agent.seams.SystemClock`."""

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

    def sleep(self, seconds: float) -> None:
        """Return at once, the clocks moved forward by `seconds`."""
        self.advance(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self._wall += seconds
        self._mono += seconds


# -- the broker -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentMessage:
    """One hand-over to the (pretend) broker; ``dup`` marks a resend after a reconnect."""

    token: int
    message: OutboundMessage
    dup: bool


class InMemoryTransport:
    """A `agent.seams.Transport` without a network.

    With ``auto_ack`` every message is acknowledged as soon as it is sent; without
    it, tests call `ack`/`ack_all`/`reject`. `drop_connection` loses the link (un-acked
    messages stay in flight, as in paho); `reconnect` resends them with ``dup``.
    `deliver` hands a payload to the callback subscribed to its topic, as the broker would.
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
        self.subscriptions: dict[str, Callable[[bytes], None]] = {}
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

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Remember `callback` for the payloads `deliver` hands over on `topic`."""
        with self._lock:
            self.subscriptions[topic] = callback

    def deliver(self, topic: str, payload: bytes) -> bool:
        """Hand `payload` to the callback subscribed to `topic`; False if there is none."""
        with self._lock:
            callback = self.subscriptions.get(topic)
        if callback is None:
            return False
        callback(payload)
        return True

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


# -- models -----------------------------------------------------------------------------------------


class FunctionScorer:
    """The in-memory twin of `agent.models.scorer.OnnxScorer`: scores with a plain function."""

    __slots__ = ("_function", "_manifest")

    def __init__(
        self, manifest: ModelManifest, function: Callable[[FloatArray], Mapping[str, FloatArray]]
    ) -> None:
        self._manifest = manifest
        self._function = function

    def __repr__(self) -> str:
        return f"FunctionScorer({self._manifest.label})"

    @property
    def manifest(self) -> ModelManifest:
        """The manifest this scorer stands for."""
        return self._manifest

    def score(self, features: FloatArray) -> Mapping[str, FloatArray]:
        """Outputs by name, as computed by the function."""
        return self._function(features)


@dataclass(frozen=True, slots=True)
class Refused:
    """A model `InMemoryModels` refused on its own (an `agent.seams.ModelRefusal`)."""

    source: Path
    reason: str
    manifest: ModelManifest | None


class InMemoryModels:
    """The in-memory twin of `agent.models.lifecycle.StoreModels`.

    It starts with `initial`; the test `offer`s candidates (the newest not yet taken wins,
    as with the store's watcher) and `refuse`s models, and reads what the life cycle
    `accepted` and `rejected`. ``wakeup``, if given, is set on each offer (the loop's).
    """

    def __init__(self, initial: Scorer, *, wakeup: threading.Event | None = None) -> None:
        self._current = initial
        self._wakeup = wakeup
        self._lock = threading.Lock()
        self._offered: Scorer | None = None
        self._refusals: list[Refused] = []
        self.accepted: list[Scorer] = []
        self.rejected: list[tuple[Scorer, str]] = []
        self.marked_bad: list[tuple[int, str, str]] = []
        self.started = False
        self.stopped = False

    @property
    def current(self) -> Scorer:
        """The model the streams score with."""
        return self._current

    def load_initial(
        self,
        max_version: int | None,
        unfit: Callable[[ModelManifest], str | None],
        running: int | None = None,
    ) -> Scorer:
        """The initial scorer (whatever the versions); `ModelLoadError` if the streams cannot feed it."""
        reason = unfit(self._current.manifest)
        if reason is not None:
            raise ModelLoadError(f"{self._current.manifest.label} cannot serve here: {reason}")
        return self._current

    def start(self) -> None:
        """Mark the source started."""
        self.started = True

    def mark_bad(self, version: int, sha256: str, reason: str) -> None:
        """Record the verdict (as `marked_bad`)."""
        self.marked_bad.append((version, sha256, reason))

    def offer(self, candidate: Scorer) -> None:
        """Make `candidate` the next one `take` returns."""
        with self._lock:
            self._offered = candidate
        if self._wakeup is not None:
            self._wakeup.set()

    def refuse(self, source: Path, reason: str, manifest: ModelManifest | None = None) -> None:
        """Refuse a model on the source's own account (as the store refuses an unverifiable one)."""
        with self._lock:
            self._refusals.append(Refused(source, reason, manifest))

    def take(self) -> Scorer | None:
        """The candidate offered last and not taken yet, or None."""
        with self._lock:
            offered, self._offered = self._offered, None
        return offered

    def accept(self, scorer: Scorer) -> None:
        """`scorer` is the current model now."""
        self._current = scorer
        self.accepted.append(scorer)

    def reject(self, scorer: Scorer, reason: str) -> None:
        """Record the verdict."""
        self.rejected.append((scorer, reason))

    def take_refusals(self) -> Sequence[ModelRefusal]:
        """The refusals since the last call."""
        with self._lock:
            refusals, self._refusals = self._refusals, []
        return refusals

    def stop(self) -> None:
        """Mark the source stopped."""
        self.stopped = True


if TYPE_CHECKING:  # mypy proves every twin, and its real counterpart, satisfies its seam
    from agent.models.lifecycle import StoreModels
    from agent.models.scorer import OnnxScorer
    from agent.publish.mqtt import MqttTransport
    from agent.seams import Clock, ModelSource, SystemClock, Transport

    def _clocks(twin: ManualClock, real: SystemClock) -> tuple[Clock, Clock]:
        return twin, real

    def _transports(twin: InMemoryTransport, real: MqttTransport) -> tuple[Transport, Transport]:
        return twin, real

    def _scorers(twin: FunctionScorer, real: OnnxScorer) -> tuple[Scorer, Scorer]:
        return twin, real

    def _sources(twin: InMemoryModels, real: StoreModels) -> tuple[ModelSource, ModelSource]:
        return twin, real
