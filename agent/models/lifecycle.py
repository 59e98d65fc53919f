"""The model life cycle as one state machine: which model scores, which one is on probation, and why.

The daemon owns one `ModelLifecycle` and calls `step` once a tick, between windows.
A step publishes the source's refusals, takes a verified newer candidate from the
model source (`StoreModels`: the store's slot and watcher), and moves it along::

    candidate ──unfit for the streams──────────────► rejected
        │ probation_windows = 0 ─► live (swapped in at once)
        ▼
    probation (shadow-scored on every stream, with its own ──failure──► rolled back
        │       featurizer when its feature spec differs)
        │ enough windows and enough time, no failure
        ▼
    live, on trial (every stream scores with it) ──agent dies before confirm_windows──► bad
        │ confirm_windows scored                     (marked on disk; the previous serves
        ▼                                              on the next start)
    live

A newer candidate supersedes the one on probation. Every transition is logged, sent
as a model status or model event (counted by state for the heartbeat) and shown in
systemd's status line. A refused or rolled-back candidate is remembered by the
source (the store's slot: until its files change), so it is never offered again as it is.

Two files in the state directory, each written atomically, carry the life cycle over a
restart: ``probation.json`` (the open probation's counts and time, so a restart neither
skips nor restarts it from zero) and ``model-trial.json`` (the model swapped in and not
yet confirmed; found at start, it means the agent died with that model: it is marked bad
in the store and the one before it loads; unless the machine was rebooted meanwhile, which
blames no model, as in `agent.crashguard`).

At start, with probation on, the model the streams were scored with before the
restart is loaded (not a newer store version), so a candidate that had not finished
its probation goes through it again, resuming its saved counts.

Expiry (``agent.model.on_expiry``): an expired running model is never silently replaced
by an older one. With ``keep_serving`` it keeps serving, across restarts too; with
``fall_back`` the next start loads the newest unexpired version and reports the expired
one as rejected. Either way the running model's expiry is reported once as an "expired"
model event and in the retained status's detail.

With a model channel configured, a `agent.models.fetch.ModelFetcher` follows the
announcements on the transport.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timezone
from pathlib import Path
from typing import Any, Literal

import structlog

from agent.config import AgentConfig, ModelConfig
from agent.contract.manifest import ModelManifest
from agent.contract.topics import RobotTopics, model_announcements
from agent.crashguard import boot_id
from agent.errors import ModelRejectedError
from agent.models.fetch import ModelFetcher
from agent.models.probation import Probation
from agent.models.scorer import OnnxScorer
from agent.models.slot import ModelSlot, Refusal
from agent.models.store import write_file_atomically
from agent.models.verify import check_expiry
from agent.models.watch import ModelWatcher
from agent.ownfiles import read_own
from agent.publish import telemetry
from agent.sdnotify import Notifier
from agent.seams import Clock, LoadGuard, ModelSource, OutboundMessage, Scorer, Transport
from agent.streams.pipeline import StreamPipeline

log = structlog.get_logger("robotpm.agent")

EventState = Literal["probation", "rolled_back", "rejected", "expired"]

PROBATION_FILE = "probation.json"
TRIAL_FILE = "model-trial.json"
_SAVE_EVERY_S = 1.0


class StoreModels:
    """The model store as the life cycle's `agent.seams.ModelSource`.

    The `ModelSlot` verifies, golden-tests and holds the models; the `ModelWatcher` looks
    for newer ones on its own thread and sets ``wakeup`` (the loop's) when one is ready,
    so the swap does not wait for the next file event. An old session dropped by a swap
    or a rollback is handed back to the OS on the watcher's thread, not the loop's.
    """

    def __init__(
        self, config: ModelConfig, *, wakeup: threading.Event | None = None, guard: LoadGuard | None = None
    ) -> None:
        self.slot = ModelSlot(config, guard=guard)
        self.watcher = ModelWatcher(self.slot, config.directory, config.check_interval_s, ready=wakeup)

    @property
    def current(self) -> Scorer:
        """The model the streams score with."""
        return self.slot.current

    def load_initial(
        self,
        max_version: int | None,
        unfit: Callable[[ModelManifest], str | None],
        running: int | None = None,
    ) -> OnnxScorer:
        """The newest usable store model up to `max_version`, else the bundled one (see `ModelSlot`)."""
        return self.slot.load_initial(max_version, unfit=unfit, running=running)

    def mark_bad(self, version: int, sha256: str, reason: str) -> None:
        """Refuse the store model of this version and hash for good (it took the agent down)."""
        self.slot.mark_bad(version, sha256, reason)

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
        self._probation_saved = 0.0
        self._trial: tuple[str, int] | None = None  # (label, windows scored when it went live)
        self._expiry_reported: str | None = None
        self._crashed = False
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
        """Load the model to start with, given the streams' saved states (None: a stream without).

        A model left on trial by the previous run (`TRIAL_FILE`) is marked bad first.
        """
        self._mark_crashed_trial()
        running = self._version_before_restart(saved_states)
        max_version = running if self._config.model.probation_windows else None
        scorer = self.source.load_initial(max_version, self.unfit, running)
        self._notifier.status(f"model {scorer.manifest.label} loaded")
        return scorer

    def note_crash(self) -> None:
        """The agent is going down on an error: a model on trial stays suspect (see `stop`)."""
        self._crashed = True

    def start(self, pipelines: Sequence[StreamPipeline], transport: Transport) -> list[OutboundMessage]:
        """Start watching the store (and the model channel); returns the first model status messages."""
        self._pipelines = list(pipelines)
        self._start_fetcher(transport)
        self.source.start()
        return [self._status(self.source.current.manifest), *self._refusal_statuses(), *self._expiry()]

    def stop(self) -> None:
        """Stop the fetcher and the model source; save an open probation.

        A clean stop ends a model's trial (it did not take the agent down); after `note_crash`
        the trial file stays, and the next start marks that model bad.
        """
        if self.fetcher is not None:
            self.fetcher.stop()
        self.source.stop()
        if self._probation is not None and not self._probation.finished:
            self._save_probation(force=True)
        if self._trial is not None and not self._crashed:
            self._end_trial()

    def step(self) -> list[OutboundMessage]:
        """Between windows: publish refusals, start or judge a probation, swap a model in."""
        messages = [*self._refusal_statuses(), *self._expiry()]
        self._confirm_trial()
        candidate = self.source.take()
        if candidate is not None:
            messages += self._begin(candidate)
        probation = self._probation
        if probation is None:
            return messages
        if not probation.finished:
            self._save_probation()
            return messages
        self._set_shadow(None)
        self._path(PROBATION_FILE).unlink(missing_ok=True)
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

    def _path(self, name: str) -> Path:
        return self._config.state_dir / name

    def _save_probation(self, *, force: bool = False) -> None:
        """Persist the open probation (at most every `_SAVE_EVERY_S`), so a restart resumes it."""
        probation = self._probation
        now = self._clock.monotonic()
        if probation is None or (not force and now - self._probation_saved < _SAVE_EVERY_S):
            return
        self._probation_saved = now
        try:
            write_file_atomically(self._path(PROBATION_FILE), json.dumps(probation.state()).encode())
        except OSError as exc:  # a full disk costs the resume after a restart, nothing else
            log.warning("probation_not_saved", model=probation.candidate.manifest.label, error=str(exc))

    def _saved_probation(self) -> dict[str, Any]:
        try:
            data = json.loads(read_own(self._path(PROBATION_FILE)))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _windows_scored(self) -> int:
        return sum(p.counters.windows for p in self._pipelines)

    def _begin_trial(self, candidate: Scorer, previous: ModelManifest) -> None:
        manifest = candidate.manifest
        record = {
            "model": manifest.label,
            "version": manifest.version,
            "sha256": manifest.sha256,
            "previous": previous.label,
            "confirm_windows": self._config.model.confirm_windows,
            "boot": boot_id(),
        }
        try:
            write_file_atomically(self._path(TRIAL_FILE), json.dumps(record).encode())
        except OSError as exc:
            log.warning("model_trial_not_saved", model=manifest.label, error=str(exc))
        self._trial = (manifest.label, self._windows_scored())

    def _confirm_trial(self) -> None:
        trial = self._trial
        if trial is not None and self._windows_scored() - trial[1] >= self._config.model.confirm_windows:
            log.info("model_confirmed", model=trial[0], windows=self._windows_scored() - trial[1])
            self._end_trial()

    def _end_trial(self) -> None:
        self._trial = None
        try:
            self._path(TRIAL_FILE).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("model_trial_not_ended", error=str(exc))

    def _mark_crashed_trial(self) -> None:
        """The previous run died with a model on trial: refuse that model for good."""
        try:
            record = json.loads(read_own(self._path(TRIAL_FILE)))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("model_trial_unreadable", error=str(exc))
            self._path(TRIAL_FILE).unlink(missing_ok=True)
            return
        try:
            label, version, sha256 = str(record["model"]), int(record["version"]), str(record["sha256"])
        except (KeyError, TypeError, ValueError):
            log.warning("model_trial_unreadable", error="missing fields")
        else:
            if record.get("boot") and boot_id() and record.get("boot") != boot_id():
                # The machine restarted (power cut, reboot): that blames no model, as in agent.crashguard.
                log.warning("model_trial_ended_by_reboot", model=label)
                self._path(TRIAL_FILE).unlink(missing_ok=True)
                return
            reason = (
                f"{label} took the agent down during or right after its swap (before it scored "
                f"{record.get('confirm_windows', '?')} windows); {record.get('previous', '?')} serves instead"
            )
            log.error("model_marked_bad", model=label, reason=reason)
            self.source.mark_bad(version, sha256, reason)
        self._path(TRIAL_FILE).unlink(missing_ok=True)

    def _expiry(self) -> list[OutboundMessage]:
        """Report once that the running model has expired (it keeps serving until a start falls back)."""
        manifest = self.source.current.manifest
        if manifest.expires is None or self._expiry_reported == manifest.label:
            return []
        try:  # the wall clock the verifier judges expiry by, so both agree
            check_expiry(manifest, source="the running model")
        except ModelRejectedError:
            pass
        else:
            return []
        expires = (
            manifest.expires if manifest.expires.tzinfo else manifest.expires.replace(tzinfo=timezone.utc)
        )
        self._expiry_reported = manifest.label
        policy = self._config.model.on_expiry
        then = (
            "the next start falls back to the newest unexpired version"
            if policy == "fall_back"
            else ("it keeps serving until a newer model is verified")
        )
        detail = f"expired at {expires.isoformat()}; {then} (on_expiry = {policy})"
        log.warning("model_expired", model=manifest.label, detail=detail)
        self._notifier.status(f"model {manifest.label} expired, still serving")
        return [self._event(manifest, "expired", detail), self._status(manifest, detail=detail)]

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
        probation = Probation(
            candidate,
            current,
            windows=cfg.probation_windows,
            max_alert_rate=cfg.probation_max_alert_rate,
            alert_margin=cfg.probation_alert_margin,
            min_s=cfg.probation_min_s,
            max_latency_ms=cfg.probation_max_latency_ms,
            clock=self._clock.monotonic,
        )
        if probation.restore(self._saved_probation()):
            log.info("probation_resumed", model=candidate.manifest.label, windows=probation.windows)
        self._set_shadow(probation)
        self._probation_saved = self._clock.monotonic()
        own = "with its own featurizer (another feature spec) " if probation.own_spec else ""
        detail = (
            f"shadow-scored {own}for {cfg.probation_windows} windows and {cfg.probation_min_s:g} s "
            f"against {current.label}"
        )
        self._notifier.status(f"model {candidate.manifest.label} on probation")
        log.info(
            "probation_started",
            model=candidate.manifest.label,
            windows=cfg.probation_windows,
            own_featurizer=probation.own_spec,
        )
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
        self._begin_trial(candidate, self.source.current.manifest)  # on disk before the first window
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

    def _status(self, manifest: ModelManifest, detail: str = "") -> OutboundMessage:
        return telemetry.model_status_message(self._topics, manifest, since=self._clock.wall(), detail=detail)

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
