"""The seams of the agent: every Protocol one module of it uses to talk to another.

Each seam has a real implementation and, where a test wants to drive it, an in-memory
twin in `agent.testing`. The daemon and its parts are written against these, so they
can be tested without a broker, a clock, an onnxruntime session or files, and are
also tested against the real ones.

Life-cycle rules (callers keep them, implementations may rely on them):

* ``Clock``: pure; any thread. ``sleep`` is the only way the agent's own code waits
  out a duration it enforces (so the manual clock can move instead).
* ``Transport``: ``subscribe`` any time before ``stop``; ``start()`` once, then any
  number of ``send`` / ``take_acks`` / ``take_rejected`` from the daemon's thread,
  then ``stop()`` once; nothing is called after ``stop()``. Subscription callbacks
  run on the transport's own thread and must only hand the payload on.
* ``Scorer``: immutable once built; ``score`` from one thread at a time.
* ``ModelSource``: ``load_initial`` once, then ``start`` once; ``take``, ``accept``,
  ``reject`` and ``take_refusals`` from the daemon's thread only; ``stop`` once.
  Only a scorer ``take`` returned is accepted or rejected, each at most once.
* ``LoadGuard``: ``after_load`` follows every ``before_load`` that returned None,
  on the same thread, before the next ``before_load``.
* ``Block``, ``Policy``, ``ShadowHook``, ``QuarantineSink``: the stream pipeline's
  parts, all used on the daemon's thread; a ``ShadowHook`` never raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from agent.contract.alerts import AlertEvent, WindowRef
from agent.contract.manifest import ModelManifest
from agent.contract.records import RejectedLine
from agent.contract.streams import StreamConfig

FloatArray = npt.NDArray[np.float64]

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


# -- time -------------------------------------------------------------------------------------------


class Clock(Protocol):
    """Wall and monotonic time, so tests can drive time (real: `SystemClock`; twin: `ManualClock`)."""

    def wall(self) -> float:
        """Seconds since the epoch."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def wall(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` of real time."""
        time.sleep(max(0.0, seconds))


# -- the broker -------------------------------------------------------------------------------------


class Transport(Protocol):
    """Hands messages to a broker and reports which ones it acknowledged or refused.

    Real: `agent.publish.mqtt.MqttTransport`; twin: `agent.testing.InMemoryTransport`.

    ``send`` never blocks on the network: it returns a token when the message was
    taken (it will be acknowledged later, or resent by the transport itself after a
    reconnect), or None when the transport cannot take it now (disconnected and
    not queueing, or the in-flight window is full); the caller retries later.
    """

    def start(self) -> None:
        """Begin connecting in the background."""

    def send(self, message: OutboundMessage) -> int | None:
        """Take one message; return a token for its acknowledgement, or None to retry later.

        Raises `agent.errors.PublishError` for a message it can never take (e.g. too large).
        """

    def take_acks(self) -> list[int]:
        """Tokens acknowledged since the last call (PUBACK received for QoS 1)."""

    def take_rejected(self) -> list[int]:
        """Tokens the broker refused since the last call (MQTT 5 failure reason code): send again later."""

    def subscribe(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Call `callback` with each payload on `topic`, now and after every reconnect."""

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up now."""

    def stop(self, farewell: Sequence[OutboundMessage] = ()) -> None:
        """Send `farewell` (e.g. a retained "offline") best effort, then disconnect cleanly."""


# -- models -----------------------------------------------------------------------------------------


class Scorer(Protocol):
    """Scores feature vectors with one model.

    Real: `agent.models.scorer.OnnxScorer`; twin: `agent.testing.FunctionScorer`.
    """

    @property
    def manifest(self) -> ModelManifest:
        """The manifest of the model."""

    def score(self, features: FloatArray) -> Mapping[str, FloatArray]:
        """Outputs by name for a batch of shape ``(n, n_features)``; each of shape ``(n, k)``."""


class ModelRefusal(Protocol):
    """A model the source refused, and why (`agent.models.slot.Refusal`)."""

    @property
    def source(self) -> Path:
        """Where the refused model came from."""

    @property
    def reason(self) -> str:
        """Why it was refused."""

    @property
    def manifest(self) -> ModelManifest | None:
        """What its manifest claims, unverified (None when unreadable): for naming it only."""


class ModelSource(Protocol):
    """Where the model life cycle gets its models, and where its verdicts go.

    Real: `agent.models.lifecycle.StoreModels` (the store, its slot and watcher); twin:
    `agent.testing.InMemoryModels`. Every scorer it hands out is verified and golden-tested.
    """

    @property
    def current(self) -> Scorer:
        """The model the streams score with."""

    def load_initial(
        self,
        max_version: int | None,
        unfit: Callable[[ModelManifest], str | None],
        running: int | None = None,
    ) -> Scorer:
        """The model to start with: the newest usable one up to `max_version` (None: any).

        `running` is the version the streams ran before the restart: expired, it may still
        serve (``agent.model.on_expiry``).
        """

    def mark_bad(self, version: int, sha256: str, reason: str) -> None:
        """Refuse this model for good (it took the agent down); reported like any refusal."""

    def start(self) -> None:
        """Begin looking for newer models in the background."""

    def take(self) -> Scorer | None:
        """A verified candidate newer than the current model, not taken before; never blocks."""

    def accept(self, scorer: Scorer) -> None:
        """`scorer` (a candidate `take` returned) is now the current model."""

    def reject(self, scorer: Scorer, reason: str) -> None:
        """Refuse a candidate `take` returned, until its files change."""

    def take_refusals(self) -> Sequence[ModelRefusal]:
        """Models refused on their own (unverifiable, unfit) since the last call."""

    def stop(self) -> None:
        """Stop looking."""


class LoadGuard(Protocol):
    """Told before and after the model slot loads a store model (real: `agent.crashguard.GuardedLoads`).

    Both run on the thread that loads (the daemon's at start, the model watcher's later).
    """

    def before_load(self, directory: Path) -> str | None:
        """A reason to refuse the model in `directory` without loading it, or None to go ahead."""

    def after_load(self, directory: Path) -> None:
        """The load that `before_load` let go ahead has ended, whatever its outcome."""


# -- one stream's pipeline --------------------------------------------------------------------------


class Block(Protocol):
    """What the pipeline needs of a follower's line block (see `agent.ingest.LineBlock`)."""

    @property
    def file_key(self) -> str:
        """Stable identity of the file the lines came from."""

    @property
    def path(self) -> Path:
        """The path the lines were read from."""

    @property
    def data(self) -> bytes:
        """Complete lines, each ending in a newline; never the CSV header."""

    @property
    def offset(self) -> int:
        """Byte offset of ``data[0]`` in its file."""

    @property
    def header(self) -> bytes | None:
        """The file's CSV header line, None for JSON lines."""

    @property
    def rejected(self) -> tuple[RejectedLine, ...]:
        """Lines the follower refused while reading (e.g. over-long)."""


class Policy(Protocol):
    """The part of the alert policy the pipeline uses (see `agent.policy.AlertPolicy`)."""

    def evaluate(
        self, scores: Any, windows: Sequence[WindowRef], features: FloatArray, *, replayed: bool
    ) -> list[AlertEvent]:
        """Alert events for scored windows."""

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state, committed with the stream's position."""

    def restore(self, state: dict[str, Any] | None) -> None:
        """Resume from saved state (None: fresh)."""

    def use_model(self, manifest: ModelManifest) -> None:
        """Continue with a new model's heads."""

    def counters(self) -> dict[str, Any]:
        """Events emitted by state and events suppressed by reason."""


class ShadowHook(Protocol):
    """Sees every window batch the pipeline scores (`agent.models.probation.Probation`); must not raise."""

    def __call__(self, features: FloatArray, current_scores: Any) -> None:
        """Take the features of scored windows and the current model's scores of them."""

    def samples(
        self, stream: StreamConfig, channels: Sequence[str], timestamps: FloatArray, values: FloatArray
    ) -> None:
        """Take a block's parsed samples (columns named by `channels`), before any window is cut."""


class QuarantineSink(Protocol):
    """Where refused lines go (see `agent.ingest.Quarantine`)."""

    def write(self, stream: str, source: Path, rejected: Sequence[RejectedLine]) -> None:
        """Record refused lines with their reasons."""
