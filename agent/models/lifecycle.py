"""The model life cycle as one state machine: which model scores, which one is on probation, and why.

The daemon owns one `ModelLifecycle` and calls `step` once a tick, between windows.
A step publishes the source's refusals, takes a verified newer candidate from the
model source (`StoreModels`: the store's slot and watcher), and moves it along::

    candidate ──unfit for the streams──────────────► rejected
        │ probation_windows = 0, or another feature spec ─► live (swapped in at once)
        ▼
    probation (shadow-scored on every stream) ──failure──► rolled back
        │ enough windows, no failure
        ▼
    live (every stream scores with it, the old session is released off the loop)

A newer candidate supersedes the one on probation. Every transition is logged, sent
as a model status or model event (counted by state for the heartbeat) and shown in
systemd's status line. A refused or rolled-back candidate is remembered by the
source (the store's slot: until its files change), so it is never offered again as it is.

At start, with probation on, the model the streams were scored with before the
restart is loaded (not a newer store version), so a candidate that had not finished
its probation goes through it again. With a model channel configured, a
`agent.models.fetch.ModelFetcher` follows the announcements on the transport.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import structlog

from agent.config import AgentConfig, ModelConfig
from agent.contract.manifest import ModelManifest
from agent.contract.topics import RobotTopics, model_announcements
from agent.models.fetch import ModelFetcher
from agent.models.probation import Probation
from agent.models.scorer import OnnxScorer
from agent.models.slot import ModelSlot, Refusal
from agent.models.watch import ModelWatcher
from agent.publish import telemetry
from agent.sdnotify import Notifier
from agent.seams import Clock, ModelSource, OutboundMessage, Scorer, Transport
from agent.streams.pipeline import StreamPipeline

log = structlog.get_logger("robotpm.agent")

EventState = Literal["probation", "rolled_back", "rejected"]


class StoreModels:
    """The model store as the life cycle's `agent.seams.ModelSource`.

    The `ModelSlot` verifies, golden-tests and holds the models; the `ModelWatcher` looks
    for newer ones on its own thread and sets ``wakeup`` (the loop's) when one is ready,
    so the swap does not wait for the next file event. An old session dropped by a swap
    or a rollback is handed back to the OS on the watcher's thread, not the loop's.
    """

    def __init__(self, config: ModelConfig, *, wakeup: threading.Event | None = None) -> None:
        self.slot = ModelSlot(config)
        self.watcher = ModelWatcher(self.slot, config.directory, config.check_interval_s, ready=wakeup)

    @property
    def current(self) -> Scorer:
        """The model the streams score with."""
        return self.slot.current

    def load_initial(
        self, max_version: int | None, unfit: Callable[[ModelManifest], str | None]
    ) -> OnnxScorer:
        """The newest usable store model up to `max_version`, else the bundled one (see `ModelSlot`)."""
        return self.slot.load_initial(max_version, unfit=unfit)

    def start(self) -> None:
        """Start watching the store."""
        self.watcher.start()

    def take(self) -> OnnxScorer | None:
        """The newest verified candidate not taken yet, or None."""
        return self.watcher.take()

    def accept(self, scorer: Scorer) -> None:
        """Make `scorer` current; its predecessor's heap is released off the loop."""
        self.slot.accept(scorer, trim=False)
        self.watcher.request_trim()

    def reject(self, scorer: Scorer, reason: str) -> None:
        """Refuse the candidate until its files change; its session is released off the loop."""
        self.slot.reject(scorer, reason)
        self.watcher.request_trim()

    def take_refusals(self) -> list[Refusal]:
        """Store models refused since the last call."""
        return self.slot.take_refusals()

    def stop(self) -> None:
        """Stop watching the store."""
        self.watcher.stop()


class ModelLifecycle:
    """The model source, the fetcher and the probation in progress; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        topics: RobotTopics,
        source: ModelSource,
        *,
        clock: Clock,
        notifier: Notifier,
    ) -> None:
        self._config = config
        self._topics = topics
        self._clock = clock
        self._notifier = notifier
        self.source = source
        self.fetcher: ModelFetcher | None = None
        self._pipelines: list[StreamPipeline] = []
        self._probation: Probation | None = None
        self.events: dict[str, int] = {}
        """Model life-cycle events sent since start, by state (for the heartbeat)."""

    @property
    def current(self) -> Scorer:
        """The scorer the streams score with."""
        return self.source.current

    @property
    def probation(self) -> Probation | None:
        """The probation of a candidate model in progress, if any."""
        return self._probation

    def load_initial(self, saved_states: Iterable[dict[str, Any] | None]) -> Scorer:
        """Load the model to start with, given the streams' saved states (None: a stream without)."""
        scorer = self.source.load_initial(self._version_before_restart(saved_states), self.unfit)
        self._notifier.status(f"model {scorer.manifest.label} loaded")
        return scorer

    def start(self, pipelines: Sequence[StreamPipeline], transport: Transport) -> list[OutboundMessage]:
        """Start watching the store (and the model channel); returns the first model status messages."""
        self._pipelines = list(pipelines)
        self._start_fetcher(transport)
        self.source.start()
        return [self._status(self.source.current.manifest), *self._refusal_statuses()]

    def stop(self) -> None:
        """Stop the fetcher and the model source."""
        if self.fetcher is not None:
            self.fetcher.stop()
        self.source.stop()

    def step(self) -> list[OutboundMessage]:
        """Between windows: publish refusals, start or judge a probation, swap a model in."""
        messages = self._refusal_statuses()
        candidate = self.source.take()
        if candidate is not None:
            messages += self._begin(candidate)
        probation = self._probation
        if probation is None or not probation.finished:
            return messages
        self._set_shadow(None)
        if probation.failure is not None:
            return [*messages, self._roll_back(probation.candidate, probation.failure)]
        candidate_rate, current_rate = probation.rates
        log.info(
            "probation_passed",
            model=probation.candidate.manifest.label,
            windows=probation.windows,
            alert_rate=round(candidate_rate, 4),
            current_alert_rate=round(current_rate, 4),
        )
        return [*messages, self._swap(probation.candidate)]

    def unfit(self, manifest: ModelManifest) -> str | None:
        """Why the configured streams cannot feed this model (channels their mapping lacks), or None."""
        for stream in self._config.streams:
            have = stream.record_schema().canonical_channels
            missing = [c for c in manifest.feature_spec.channels if c not in have]
            if missing:
                return f"stream {stream.name} provides no channels {missing}"
        return None

    def _version_before_restart(self, saved_states: Iterable[dict[str, Any] | None]) -> int | None:
        """The model version the streams were scored with before a restart (None: first start).

        With probation on, store versions newer than it start as candidates again, so a model
        that had not finished its probation goes through it again (see agent.models.probation).
        """
        if self._config.model.probation_windows == 0:
            return None
        versions: list[int] = []
        for saved in saved_states:  # a stream without saved state (e.g. new) tells nothing
            label = ((saved or {}).get("pipeline") or {}).get("model")
            _, _, version = str(label or "").rpartition("@")
            if version.isdigit():
                versions.append(int(version))
        return max(versions) if versions else None  # None: nothing ran yet, load the newest

    def _start_fetcher(self, transport: Transport) -> None:
        """Follow the model channel's announcements, if one is configured (see `agent.models.fetch`)."""
        channel = self._config.model.channel
        if channel is None:
            return
        self.fetcher = ModelFetcher(self._config.model, floor=lambda: self.source.current.manifest.version)
        self.fetcher.start()
        transport.subscribe(model_announcements(channel), self.fetcher.offer)

    def _begin(self, candidate: Scorer) -> list[OutboundMessage]:
        """Put a new candidate on probation, or swap it in at once when probation cannot apply."""
        cfg = self._config.model
        if self._probation is not None:  # a newer version supersedes the one on probation
            log.info(
                "probation_superseded",
                model=self._probation.candidate.manifest.label,
                by=candidate.manifest.label,
            )
            self._set_shadow(None)
        current = self.source.current.manifest
        unfit = self.unfit(candidate.manifest)
        if unfit is not None:
            # Swapping it in would make every tick raise: refuse it before any probation.
            return [self._roll_back(candidate, unfit, state="rejected")]
        if cfg.probation_windows == 0:
            return [self._swap(candidate)]
        if candidate.manifest.feature_spec_hash != current.feature_spec_hash:
            # Its windows differ from the ones the streams cut: it cannot be shadow-scored on
            # them. It passed its golden test; it is swapped in as without probation.
            log.warning(
                "probation_skipped",
                model=candidate.manifest.label,
                reason="feature spec differs from the current model's",
            )
            return [self._swap(candidate)]
        self._set_shadow(
            Probation(
                candidate,
                current,
                windows=cfg.probation_windows,
                max_alert_rate=cfg.probation_max_alert_rate,
                alert_margin=cfg.probation_alert_margin,
            )
        )
        detail = f"shadow-scored for {cfg.probation_windows} windows against {current.label}"
        self._notifier.status(f"model {candidate.manifest.label} on probation")
        log.info("probation_started", model=candidate.manifest.label, windows=cfg.probation_windows)
        return [self._event(candidate.manifest, "probation", detail)]

    def _set_shadow(self, probation: Probation | None) -> None:
        self._probation = probation
        for pipeline in self._pipelines:
            pipeline.set_shadow(probation)

    def _roll_back(
        self,
        candidate: Scorer,
        reason: str,
        *,
        state: Literal["rolled_back", "rejected"] = "rolled_back",
    ) -> OutboundMessage:
        """Refuse a candidate (until its files change) and say so: it is never used."""
        self.source.reject(candidate, reason)
        log.warning(
            "model_rolled_back" if state == "rolled_back" else "model_refused",
            model=candidate.manifest.label,
            reason=reason,
        )
        return self._event(candidate.manifest, state, reason)

    def _swap(self, candidate: Scorer) -> OutboundMessage:
        started = time.perf_counter()  # measured for the log, not enforced: the real clock
        for pipeline in self._pipelines:
            pipeline.use_scorer(candidate)
        self.source.accept(candidate)
        self._notifier.status(f"model {candidate.manifest.label} live")
        log.info(
            "model_live",
            model=candidate.manifest.label,
            swap_ms=round((time.perf_counter() - started) * 1e3, 3),
        )
        return self._status(candidate.manifest)

    def _status(self, manifest: ModelManifest) -> OutboundMessage:
        return telemetry.model_status_message(
            self._topics, self._config.robot_id, self._config.site, manifest, since=self._clock.wall()
        )

    def _event(
        self,
        manifest: ModelManifest | None,
        state: EventState,
        detail: str,
        source: str | None = None,
    ) -> OutboundMessage:
        self.events[state] = self.events.get(state, 0) + 1
        return telemetry.model_event_message(
            self._topics,
            self._config.robot_id,
            self._config.site,
            manifest,
            state=state,
            since=self._clock.wall(),
            detail=detail,
            source=source,
        )

    def _refusal_statuses(self) -> list[OutboundMessage]:
        return [
            self._event(r.manifest, "rejected", r.reason, source=str(r.source))
            for r in self.source.take_refusals()
        ]
