"""The agent daemon: startup → tick loop → graceful shutdown.

One thread does the pipeline work (uvicorn's shape): each tick waits for file
activity (or the safety-net poll period), lets every stream runner read and
score its new lines, takes one step of the model life cycle
(`agent.models.lifecycle.ModelLifecycle`: probation, rollback, swap, between
windows), commits the streams' positions together with the resulting outbox rows
in one SQLite transaction, hands pending outbox rows to the transport, and feeds
the systemd watchdog, so the watchdog stops being fed when the loop stalls.

Each stream is a `agent.streams.runner.StreamRunner`: it holds lines too few to
complete a window (read, not parsed) and gates the file watcher's wake-ups the
same way, so at 1 kHz appends and a hop of 100 lines the loop wakes about 10 times
a second instead of 200, without adding latency to alerts.

Commit rule: a tick that produced alert rows commits at once (alerts are not
held back); otherwise a tick commits at most every ``ingest.checkpoint_interval_s``,
and telemetry (heartbeats, model status) waits for that commit rather than paying
an fsync of its own. After a crash, whatever was read after the last
commit is read again and, being deterministic, yields the same event ids.

Alert rows are handed to the transport inside their transaction, just before the
COMMIT, so the broker round trip overlaps the fsync (~3 ms). A crash in between
cannot lose an alert (nothing was committed, the lines are read again); it can
only repeat one, with the same ``event_id``.

Bad luck degrades the agent, it never ends it (docs/fault-model.md): a stream that
fails is degraded and retried by its runner while the others go on; on a full disk
the loop stops reading (nothing is committed, so nothing is lost), keeps
delivering, sends its heartbeat straight to the broker, and retries the commit
until there is room; a start on a full disk waits; a damaged state file is moved
aside (`agent.state.open_state`); what the agent was doing when it died is
remembered (`agent.crashguard`) so the next start skips it. Faults are logged, put
in every heartbeat and in ``health.json`` for ``robotpm-agent status``. A stop is
bounded (`agent.stopping`): the final commit first, then every wait on one budget.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

import structlog

from agent import __version__, memory, reload
from agent.config import AgentConfig
from agent.contract.alerts import AlertEvent, ModelRef
from agent.contract.errors import ConfigError
from agent.contract.topics import RobotTopics
from agent.crashguard import CrashGuard, GuardedLoads, stream_component
from agent.errors import PublishError, StateError
from agent.health import HEALTH_FILE, AgentState, Health
from agent.ingest import Quarantine, StreamFollower
from agent.logfile import configure_agent_logging
from agent.models.fetch import ModelFetcher
from agent.models.lifecycle import ModelLifecycle, StoreModels
from agent.models.probation import Probation
from agent.models.slot import ModelSlot
from agent.outbox import Outbox
from agent.policy import AlertPolicy
from agent.publish import Delivery, MqttTransport, telemetry
from agent.sdnotify import Notifier
from agent.seams import Clock, ModelSource, OutboundMessage, SystemClock, Transport
from agent.state import DiskSpace, StateStore, is_disk_full, open_state
from agent.stopping import StopBudget
from agent.streams.pipeline import StreamPipeline
from agent.streams.runner import StreamRunner
from agent.technician.operations import FieldOperations, model_view
from agent.technician.statusfile import BrokerStatus, ModelStatusView

log = structlog.get_logger("robotpm.agent")

QUARANTINE_FILE = "quarantine.jsonl"
T = TypeVar("T")
FLUSH_ON_STOP_S = 2.0
"""How long a stop waits for the broker to take what the outbox holds."""


class StartAbandoned(Exception):
    """A stop was requested while the start was waiting (e.g. for disk space)."""


class AgentDaemon:
    """The running agent. Build it, then `run` it until a stop event is set (or `stop` is called)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport: Transport | None = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        models: ModelSource | None = None,
        reload_config: Callable[[], AgentConfig] | None = None,
    ) -> None:
        self.config = config
        self._reload_config = reload_config
        self._reload_requested = False
        self.clock: Clock = clock or SystemClock()
        self.topics = RobotTopics(config.site, config.robot_id)
        self.notifier = notifier or Notifier.from_env()
        self._transport_arg = transport
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._shut_down = False
        self._streams: list[StreamRunner] = []
        self._last_commit = 0.0
        self._last_heartbeat = 0.0
        self._last_watchdog = 0.0
        self._started_at = 0.0
        self._pending: list[OutboundMessage] = []  # telemetry to commit with the next tick
        self._unsaved: list[OutboundMessage] = []  # messages of a commit the full disk refused
        self._unsaved_events: list[AlertEvent] = []  # and its alert events
        self.store: StateStore | None = None
        self.outbox: Outbox | None = None
        self.delivery: Delivery | None = None
        self.transport: Transport | None = None
        self.fieldops: FieldOperations | None = None
        self.guard = CrashGuard(config.state_dir, hang_report_s=config.hang_report_s)
        self.disk = DiskSpace(config.state_dir)
        self.health = Health(
            config.state_dir / HEALTH_FILE, self.notifier, refresh_s=config.heartbeat_interval_s
        )
        source = models or StoreModels(config.model, wakeup=self._wakeup, guard=GuardedLoads(self.guard))
        self.models = ModelLifecycle(config, self.topics, source, clock=self.clock, notifier=self.notifier)

    # -- startup and shutdown ----------------------------------------------------------------------

    def startup(self) -> None:
        """Open state, load the model, restore and start every stream, connect the transport.

        Raises `StartAbandoned` if stopped while waiting for disk space; whatever it raises,
        what it had started is shut down first.
        """
        try:
            self._startup()
        except BaseException:
            self.shutdown()
            raise

    def _startup(self) -> None:
        cfg = self.config
        self._started_at = self.clock.monotonic()
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.guard.open(self.clock.wall())
        self.health.open()
        for component, reason in self.guard.blamed.items():
            self.health.standing(component, f"skipped at start: {reason}")
        self.health.update("starting", {}, self.clock.wall(), force=True)
        self.store, self.outbox = self._open_state()
        saved = {stream.name: self.store.load_stream_state(stream.name) for stream in cfg.streams}
        scorer = self.models.load_initial(saved.values())
        self.fieldops = FieldOperations(cfg, self.store, self.outbox, self.topics, self.clock)
        quarantine = Quarantine(
            cfg.state_dir / QUARANTINE_FILE, cfg.ingest.quarantine_max_bytes, clock=self.clock.wall
        )
        for stream in cfg.streams:
            policy = self.fieldops.wrap(
                AlertPolicy(
                    scorer.manifest,
                    cfg.policy,
                    robot_id=stream.robot_id or cfg.robot_id,
                    site=cfg.site,
                    stream=stream.name,
                    agent_version=__version__,
                    clock=self.clock,
                )
            )
            pipeline = StreamPipeline(stream, cfg.ingest, scorer, policy, quarantine, drift=cfg.drift)
            pipeline.on_scored = self.fieldops.inference.observe
            runner = StreamRunner(
                pipeline,
                StreamFollower(stream, cfg.ingest, self._wakeup, clock=self.clock.monotonic),
                cfg.ingest,
                self._wakeup,
            )
            skip = self.guard.stream_skip(stream.name, self.clock.wall())
            if skip is not None:
                runner.skip(self.clock.monotonic(), *skip)
            else:
                self._guarded(runner, "restoring its position", partial(runner.restore, saved[stream.name]))
            self._streams.append(runner)
        self.transport = self._transport_arg or MqttTransport(
            cfg.mqtt, robot_id=cfg.robot_id, site=cfg.site, agent_version=__version__, clock=self.clock
        )
        self.delivery = Delivery(
            self.outbox, self.transport, max_inflight=cfg.mqtt.max_inflight, clock=self.clock
        )
        self._pending.extend(self.models.start([s.pipeline for s in self._streams], self.transport))
        self.transport.start()
        for s in self._streams:
            self._guarded(s, "starting to watch it", partial(s.start, self.clock.monotonic()))
        statuses, self._pending = [*self._pending, self.fieldops.open_alerts_message()], []
        self._commit(force=True, messages=statuses, streams=False)  # the model status goes out at once
        memory.trim()  # what startup freed goes back before READY=1 (agent/memory.py)
        self.notifier.ready(f"scoring {len(self._streams)} stream(s) with {scorer.manifest.label}")
        self._report("running", force=True)
        log.info(
            "agent_started",
            robot=cfg.robot_id,
            site=cfg.site,
            streams=[s.name for s in self._streams],
            model=scorer.manifest.label,
            version=__version__,
        )

    def _open_state(self) -> tuple[StateStore, Outbox]:
        """The state store and its outbox; waits while the disk is full, moves a damaged file aside."""
        while True:
            store: StateStore | None = None
            try:
                store, moved = open_state(self.config.state_dir, wall=self.clock.wall())
                outbox = Outbox(store, self.config.outbox, self.clock)
            except StateError as exc:
                if store is not None:
                    store.close()
                if not is_disk_full(exc, self.config.state_dir):
                    raise
                wait = self.disk.failed(self.clock.monotonic(), exc)
                self.notifier.extend_timeout(int((wait + 30.0) * 1e6))  # waiting is not failing to start
                self.health.update("waiting", {"disk": self.disk.describe()}, self.clock.wall())
                if self._stop.wait(wait):
                    raise StartAbandoned("stopped while waiting for disk space") from exc
                continue
            self.disk.recovered(self.clock.monotonic())
            if moved is not None:
                reason = (
                    f"agent.db was damaged; moved aside to {moved.name}, started afresh (streams re-read)"
                )
                log.error("state_damaged_moved_aside", path=str(store.path), moved_to=str(moved))
                self.health.standing("state", reason)
            return store, outbox

    def run(self, stop: threading.Event | None = None) -> None:
        """Run ticks until `stop` is set (or `stop()` is called), then shut down within the stop budget."""
        if stop is not None:
            self._stop = stop
        try:
            self.startup()
            while not self._stop.is_set():
                self.tick(self.config.ingest.poll_interval_s)
        except StartAbandoned:
            log.info("start_abandoned", reason="stop requested")
        except Exception:
            self.models.note_crash()  # a model on trial when the loop failed is suspect
            raise
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Ask `run` to stop (safe from a signal handler): the loop's wait ends at once."""
        self._stop.set()
        self._wakeup.set()

    def request_reload(self) -> None:
        """Reload the config between ticks (safe to call from a signal handler; see `agent.reload`)."""
        self._reload_requested = True
        self._wakeup.set()

    def shutdown(self) -> None:
        """Final commit first, then close everything within ``stop_timeout_s``, whatever the network does.

        Idempotent.
        """
        if self._shut_down:
            return
        self._shut_down = True
        budget = StopBudget(self.config.stop_timeout_s)
        self.notifier.stopping()
        models_stopping = budget.start("models", self.models.stop)  # may wait for a download to notice
        events: list[AlertEvent] = []
        for s in self._streams:
            events.extend(s.flush())
        messages, self._pending = self._pending, []
        if self.store is not None and self.fieldops is not None:
            self._commit(force=True, messages=messages, events=events)
            if self.disk.full:
                log.error(
                    "final_commit_not_made", reason="disk full", unsaved_events=len(self._unsaved_events)
                )
            if self.transport is not None:
                self.fieldops.stopped(
                    streams=self._streams,
                    broker=self._broker_status(),
                    model=self._model_status(),
                    uptime_s=self.clock.monotonic() - self._started_at,
                )
        closing = [budget.start(f"stream-{s.name}", s.close) for s in self._streams]
        if self.delivery is not None and self.transport is not None:
            self._flush_outbox(min(FLUSH_ON_STOP_S, budget.left() / 2))
            offline = telemetry.presence(
                self.config.robot_id,
                self.config.site,
                "offline",
                __version__,
                since=self.clock.wall(),
                reason="stopped",
            )
            farewell = [telemetry.presence_message(self.topics, offline)]
            budget.run("transport", lambda: self.transport.stop(farewell) if self.transport else None)
        for step in [*closing, models_stopping]:
            budget.wait(step)
        if self.store is not None:
            self.store.close()
        self.guard.close()
        self.health.close(self.clock.wall())
        self.notifier.close()
        log.info("agent_stopped", robot=self.config.robot_id)

    def _flush_outbox(self, seconds: float) -> None:
        """Hand the broker what the outbox holds for up to `seconds` (of the daemon's clock)."""
        assert self.delivery is not None
        assert self.transport is not None
        assert self.outbox is not None
        deadline = self.clock.monotonic() + seconds
        while self.outbox.depth() and self.clock.monotonic() < deadline and self.transport.connected:
            self.delivery.pump()
            self.clock.sleep(0.01)
        self.delivery.pump()

    # -- the loop ----------------------------------------------------------------------------------

    def tick(self, timeout_s: float) -> int:
        """One turn of the loop; returns how many lines were read."""
        deadlines = [d for d in (s.hold_deadline() for s in self._streams) if d is not None]
        if deadlines:  # come back in time to parse lines held for max_hold_s
            timeout_s = max(0.0, min(timeout_s, min(deadlines) - self.clock.monotonic()))
        self._wakeup.wait(timeout_s)
        self._wakeup.clear()
        if self._reload_requested:
            self._reload_requested = False
            self._reload()
        lines = 0
        events: list[AlertEvent] = []
        now = self.clock.monotonic()
        if not self.disk.full:  # a full disk: read nothing that could not be committed
            for s in self._streams:
                before = s.pipeline.counters.lines
                events.extend(self._guarded(s, "reading it", partial(s.step, now)))
                lines += s.pipeline.counters.lines - before
        model_messages = self.models.step()
        self._pending.extend(model_messages)
        assert self.fieldops is not None
        self.fieldops.note_model_messages(model_messages)
        self.fieldops.bind_model(self.models.current.manifest.label)
        if now - self._last_heartbeat >= self.config.heartbeat_interval_s:
            self._last_heartbeat = now
            self._heartbeat()
            memory.trim()
        messages: list[OutboundMessage] = []
        # Telemetry (heartbeats, model status) rides on the next commit that happens anyway: one
        # with alerts, or the checkpoint. A commit of its own would cost the loop an fsync.
        if self._pending and (events or now - self._last_commit >= self._interval):
            messages, self._pending = self._pending, []
        self._commit(force=bool(messages or events), messages=messages, events=events)
        if not self.disk.full:  # shelving requests and the status file need the disk
            self.fieldops.step(now)
            self.fieldops.refresh_status(
                now,
                streams=self._streams,
                broker=self._broker_status(),
                model=self._model_status(),
                uptime_s=now - self._started_at,
                drift=_worst_drift([s.pipeline.drift.state for s in self._streams]),
            )
        assert self.delivery is not None
        self.delivery.pump()
        self._report("running")
        interval = self.notifier.watchdog_interval_s  # half of WatchdogSec
        # Ping a little early: a tick ends at most poll_interval_s late, and the gap must stay
        # under half of WatchdogSec even on a loaded machine.
        if interval is not None and now - self._last_watchdog >= 0.75 * interval:
            self._last_watchdog = now
            self.notifier.watchdog()
        return lines

    def _guarded(self, runner: StreamRunner, doing: str, step: Callable[[], T]) -> T:
        """Run a step of a stream inside a crash-guard breadcrumb."""
        self.guard.enter("loop", stream_component(runner.name), doing)
        try:
            return step()
        finally:
            self.guard.leave("loop")

    def _commit(
        self,
        *,
        force: bool,
        messages: Sequence[OutboundMessage] = (),
        events: Sequence[AlertEvent] = (),
        streams: bool = True,
    ) -> None:
        """Commit the streams' states (unless not `streams`), `events` and `messages`; kept on a full disk."""
        now = self.clock.monotonic()
        messages, self._unsaved = [*self._unsaved, *messages], []
        events, self._unsaved_events = [*self._unsaved_events, *events], []
        dirty = any(s.unsaved for s in self._streams)
        due = force or self.disk.full or now - self._last_commit >= self._interval
        if not self.disk.due(now) or not (messages or events or (dirty and due)):
            self._unsaved, self._unsaved_events = messages, events
            return
        assert self.store is not None
        assert self.outbox is not None
        assert self.fieldops is not None
        overlap = False
        try:
            with self.store.transaction() as conn:
                for s in self._streams if streams else ():
                    StateStore.save_stream_state(conn, s.name, s.state(), self.clock.wall())
                # Journaled with their outbox rows; a shelve withholds some from the broker.
                rows = [*self.fieldops.admit(conn, events), *messages]
                if rows:
                    self.outbox.enqueue(conn, rows)
                    overlap = not self.disk.full and any(m.kind == "alert" for m in rows)
                    if overlap and self.delivery is not None:
                        self.delivery.send_pending()  # overlap the network trip with the fsync
        except Exception as exc:
            if overlap and self.delivery is not None:
                self.delivery.rewind()  # row ids handed over may be reused after the rollback
            if not is_disk_full(exc, self.config.state_dir):
                raise
            self.disk.failed(now, exc)
            self._unsaved, self._unsaved_events = messages, events  # tried again once there is room
            return
        self.disk.recovered(now)
        if streams:
            self._last_commit = now
            for s in self._streams:
                s.saved()

    def _reload(self) -> None:
        """Apply the live parts of the config file as it is now; keep everything if it does not load."""
        if self._reload_config is None:
            log.warning("config_reload_refused", reason="this agent was started without a config file")
            return
        try:
            new = self._reload_config()
        except ConfigError as exc:
            log.error("config_reload_refused", reason=str(exc), key=exc.key, kept="the running config")
            return
        reload_keys = getattr(getattr(self.models.source, "slot", None), "reload_trusted_keys", None)
        keys_live = callable(reload_keys)
        changed = reload.changed_keys(self.config, new)
        live = [k for k in changed if reload.is_live(k, trusted_keys_live=keys_live)]
        later = [k for k in changed if k not in live]
        if "model.trusted_keys" in live and callable(reload_keys):
            try:
                reload_keys(new.model)
            except ConfigError as exc:
                log.error("config_reload_refused", reason=str(exc), key=exc.key, kept="the running config")
                return
        self.config = reload.merged(self.config, new, trusted_keys_live=keys_live)
        configure_agent_logging(self.config)
        assert self.fieldops is not None
        self.fieldops.use_config(self.config)
        log.info("config_reloaded", changed=live)
        if later:
            log.warning(
                "config_restart_needed", keys=later, detail="kept at their running values until a restart"
            )

    def _broker_status(self) -> BrokerStatus:
        mqtt = self.config.mqtt
        transport = self.transport
        return BrokerStatus(
            connected=bool(transport is not None and transport.connected),
            host=mqtt.host,
            port=mqtt.port,
            last_error=str(getattr(transport, "last_error", "") or ""),
        )

    def _model_status(self) -> ModelStatusView:
        manifest = self.models.current.manifest
        ref = ModelRef(id=manifest.model_id, version=manifest.version)
        return model_view(ref, manifest.label, self.probation, self.config.model.probation_windows)

    @property
    def _interval(self) -> float:
        return self.config.ingest.checkpoint_interval_s

    def _faults(self) -> dict[str, str]:
        """What the agent runs degraded under now (besides the standing faults of `health`)."""
        faults = {stream_component(s.name): reason for s in self._streams if (reason := s.degraded_reason())}
        if self.disk.full:
            faults["disk"] = self.disk.describe()
        for component, doing in self.guard.stuck().items():
            faults[component] = f"stuck {doing}"
        return faults

    def _report(self, state: AgentState, *, force: bool = False) -> None:
        self.health.update(state, self._faults(), self.clock.wall(), force=force)
        remembered = self.guard.remembered()
        for s in self._streams:  # a stream the agent died in earlier that has worked since
            if s.healthy_steps and stream_component(s.name) in remembered:
                self.guard.forget(stream_component(s.name))

    def _heartbeat(self) -> None:
        """Queue a heartbeat; on a full disk, hand it to the transport directly (best effort)."""
        assert self.outbox is not None
        assert self.fieldops is not None
        counters = [s.pipeline.counters for s in self._streams]
        suppressed: dict[str, int] = {}
        for s in self._streams:
            for reason, count in s.pipeline.policy_counters().get("suppressed", {}).items():
                suppressed[reason] = suppressed.get(reason, 0) + int(count)
        manifest = self.models.current.manifest
        probation = self.models.probation
        candidate = probation.candidate.manifest if probation is not None else None
        record = telemetry.heartbeat_record(
            robot_id=self.config.robot_id,
            site=self.config.site,
            now=self.clock.wall(),
            uptime_s=self.clock.monotonic() - self._started_at,
            counters={
                "lines": sum(c.lines for c in counters),
                "windows": sum(c.windows for c in counters),
                "alerts": sum(c.alerts for c in counters),
                "quarantined": sum(c.quarantined for c in counters),
            },
            outbox=self.outbox,
            model=ModelRef(id=manifest.model_id, version=manifest.version),
            agent_version=__version__,
            suppressed=suppressed,
            drift=_worst_drift([s.pipeline.drift.state for s in self._streams]),
            model_candidate=(
                ModelRef(id=candidate.model_id, version=candidate.version) if candidate is not None else None
            ),
            model_events=self.models.events,
            drift_streams=self.fieldops.drift_summaries(self._streams),
            faults={**self.health.faults, **self._faults()},
        )
        followers = self.fieldops.on_heartbeat(
            record,
            streams=self._streams,
            broker_connected=bool(self.transport is not None and self.transport.connected),
            model=ModelRef(id=manifest.model_id, version=manifest.version),
        )
        message = telemetry.heartbeat_message(self.topics, record)
        self.health.update("running", self._faults(), self.clock.wall(), force=True)
        if not self.disk.full:
            self._pending.extend([*followers, message])
        elif self.transport is not None and self.transport.connected:
            with contextlib.suppress(PublishError):  # the outbox cannot take it: straight out, unawaited
                self.transport.send(message)

    # -- for status and tests ----------------------------------------------------------------------

    @property
    def slot(self) -> ModelSlot:
        """The store's model slot (the model in use, the store's candidates); with the store as source."""
        source = self.models.source
        if not isinstance(source, StoreModels):
            raise TypeError(f"the model source is {type(source).__name__}, not the store")
        return source.slot

    @property
    def probation(self) -> Probation | None:
        """The probation of a candidate model in progress, if any."""
        return self.models.probation

    @property
    def model_fetcher(self) -> ModelFetcher | None:
        """The fetcher following the model channel, if one is configured."""
        return self.models.fetcher

    @property
    def streams(self) -> list[StreamPipeline]:
        """The stream pipelines."""
        return [s.pipeline for s in self._streams]

    @property
    def faults(self) -> dict[str, str]:
        """What the agent runs degraded under, as last reported."""
        return dict(self.health.faults)


def _worst_drift(states: Sequence[str]) -> str:
    """Drifting if any stream drifts, else ok if any stream knows, else unknown."""
    if "drifting" in states:
        return "drifting"
    return "ok" if "ok" in states else "unknown"
