"""The agent daemon: startup → tick loop → graceful shutdown. It decides when; its parts do the work.

One thread does the pipeline work (uvicorn's shape). Each tick waits for file
activity (or the safety-net poll period), then:

1. every stream runner (`agent.streams.runner.StreamRunner`) reads and processes
   what is due: it holds lines too few to complete a window and gates the file
   watcher's wake-ups the same way, so at 1 kHz appends and a hop of 100 lines the
   loop wakes about 10 times a second instead of 200, without adding latency;
2. the model life cycle takes one step (`agent.models.lifecycle.ModelLifecycle`:
   probation, rollback, swap, between windows);
3. the heartbeat is built when due (`agent.reporting`);
4. the streams' positions and the resulting outbox rows are committed in one SQLite
   transaction (`agent.commits`): a tick with alerts commits at once, otherwise at
   most every ``ingest.checkpoint_interval_s``, and telemetry rides on that commit;
   after a crash what was read since is read again and yields the same event ids;
5. the field operations step (shelving) and the status file is refreshed;
6. pending outbox rows are handed to the transport;
7. ``health.json`` is written and the systemd watchdog fed (`agent.reporting`), so
   the watchdog starves when the loop stalls.

A start (`agent.startup`) opens the state store and builds the runners; a SIGHUP
is applied between ticks (`agent.reload`).

Bad luck degrades the agent, it never ends it (docs/fault-model.md): a stream that
fails is degraded and retried by its runner while the others go on; on a full disk
the loop stops reading (nothing is committed, so nothing is lost), keeps
delivering, sends its heartbeat straight to the broker, and retries the commit
until there is room; a start on a full disk waits; a damaged state file is moved
aside; what the agent was doing when it died is remembered (`agent.crashguard`) so
the next start skips it. A stop is bounded (`agent.stopping`): the final commit
first, then every wait on one budget.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Final, TypeVar

import structlog

from agent import __version__, memory, reload
from agent.commits import Committer
from agent.config import AgentConfig
from agent.contract.alerts import AlertEvent
from agent.contract.topics import RobotTopics
from agent.crashguard import CrashGuard, GuardedLoads, stream_component
from agent.errors import StartAbandoned
from agent.ingest import limits
from agent.models.fetch import ModelFetcher
from agent.models.lifecycle import ModelLifecycle, StoreModels
from agent.models.probation import Probation
from agent.models.slot import ModelSlot
from agent.outbox import Outbox
from agent.publish import Delivery, MqttTransport
from agent.reporting import Reporter
from agent.sdnotify import Notifier
from agent.seams import Clock, ModelSource, OutboundMessage, SystemClock, Transport
from agent.startup import open_state_store, stream_runners
from agent.state import DiskSpace, StateStore
from agent.stopping import StopBudget
from agent.streams.pipeline import StreamPipeline
from agent.streams.runner import StreamRunner
from agent.technician.operations import FieldOperations

log = structlog.get_logger("robotpm.agent")

T = TypeVar("T")
SYSTEM_CLOCK: Final = SystemClock()
"""The clock the agent runs on unless it is given another (stateless, so shared)."""
FLUSH_ON_STOP_S = 2.0
"""How long a stop waits for the broker to take what the outbox holds."""


class AgentDaemon:
    """The running agent. Build it, then `run` it until a stop event is set (or `stop` is called)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport: Transport | None = None,
        clock: Clock = SYSTEM_CLOCK,
        notifier: Notifier | None = None,
        models: ModelSource | None = None,
        reload_config: Callable[[], AgentConfig] | None = None,
    ) -> None:
        self.config = config
        self._reload_config = reload_config
        self._reload_requested = False
        self.clock = clock
        self.topics = RobotTopics(config.site, config.robot_id)
        self.notifier = notifier or Notifier.from_env()
        self._transport_arg = transport
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._shut_down = False
        self._streams: list[StreamRunner] = []
        self._last_heartbeat = 0.0
        self._started_at = 0.0
        self._pending: list[OutboundMessage] = []  # telemetry to commit with the next tick
        self.store: StateStore | None = None
        self.outbox: Outbox | None = None
        self.delivery: Delivery | None = None
        self.transport: Transport | None = None
        self.fieldops: FieldOperations | None = None
        self.committer: Committer | None = None
        self.guard = CrashGuard(config.state_dir, hang_report_s=config.hang_report_s)
        self.disk = DiskSpace(config.state_dir)
        source = models or StoreModels(config.model, wakeup=self._wakeup, guard=GuardedLoads(self.guard))
        self.models = ModelLifecycle(config, self.topics, source, clock=self.clock, notifier=self.notifier)
        self.reporter = Reporter(
            config, self.topics, self.clock, self.notifier, self.guard, self.disk, self.models, self._streams
        )
        self.health = self.reporter.health

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
        self.reporter.open(self._started_at)
        self.store, self.outbox = open_state_store(
            cfg, self.clock, self.disk, self.health, self.notifier, self._stop
        )
        saved = {stream.name: self.store.load_stream_state(stream.name) for stream in cfg.streams}
        scorer = self.models.load_initial(saved.values())
        self.fieldops = FieldOperations(cfg, self.store, self.outbox, self.topics, self.clock)
        self.committer = Committer(
            cfg, self.store, self.outbox, self.fieldops, self._streams, self.clock, self.disk
        )
        runners = stream_runners(
            cfg, scorer, self.fieldops, saved, wakeup=self._wakeup, clock=self.clock, guard=self.guard
        )
        for runner in runners:  # one by one: a failed restore leaves those built before it to close
            self._streams.append(runner)
        self.transport = self._transport_arg or MqttTransport(
            cfg.mqtt, robot_id=cfg.robot_id, site=cfg.site, agent_version=__version__, clock=self.clock
        )
        self.reporter.attach(self.outbox, self.fieldops, self.transport)
        self.delivery = Delivery(
            self.outbox, self.transport, max_inflight=cfg.mqtt.max_inflight, clock=self.clock
        )
        self.committer.delivery = self.delivery
        self._pending.extend(self.models.start([s.pipeline for s in self._streams], self.transport))
        self.transport.start()
        for s in self._streams:
            self._guarded(s, "starting to watch it", partial(s.start, self.clock.monotonic()))
        statuses, self._pending = [*self._pending, self.fieldops.open_alerts_message()], []
        self.committer.commit(force=True, messages=statuses, streams=False)  # model status: at once
        memory.trim()  # what startup freed goes back before READY=1 (agent/memory.py)
        self.notifier.ready(f"scoring {len(self._streams)} stream(s) with {scorer.manifest.label}")
        self.reporter.report("running", force=True)
        log.info(
            "agent_started",
            robot=cfg.robot_id,
            site=cfg.site,
            streams=[s.name for s in self._streams],
            model=scorer.manifest.label,
            version=__version__,
        )
        limits.warn_if_short(len(self._streams), cfg.ingest.max_open_files)

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
        if self.committer is not None:
            self.committer.commit(force=True, messages=messages, events=events)
            if self.disk.full:
                log.error(
                    "final_commit_not_made", reason="disk full", unsaved_events=self.committer.unsaved_events
                )
            if self.reporter.attached:
                self.reporter.stopped()
        closing = [budget.start(f"stream-{s.name}", s.close) for s in self._streams]
        if self.delivery is not None and self.transport is not None:
            self._flush_outbox(min(FLUSH_ON_STOP_S, budget.left() / 2))
            farewell = self.reporter.farewell()
            budget.run("transport", lambda: self.transport.stop(farewell) if self.transport else None)
        for step in [*closing, models_stopping]:
            budget.wait(step)
        if self.store is not None:
            self.store.close()
        self.guard.close()
        self.reporter.close()
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
            self._pending.extend(self.reporter.heartbeat())
            memory.trim()
        messages: list[OutboundMessage] = []
        # Telemetry (heartbeats, model status) rides on the next commit that happens anyway: one
        # with alerts, or the checkpoint. A commit of its own would cost the loop an fsync.
        assert self.committer is not None
        if self._pending and (events or self.committer.due(now)):
            messages, self._pending = self._pending, []
        self.committer.commit(force=bool(messages or events), messages=messages, events=events)
        if not self.disk.full:  # shelving requests and the status file need the disk
            self.fieldops.step(now)
            self.reporter.refresh_status(now)
        assert self.delivery is not None
        self.delivery.pump()
        self.reporter.report("running")
        self.reporter.alive(now)
        return lines

    def _guarded(self, runner: StreamRunner, doing: str, step: Callable[[], T]) -> T:
        """Run a step of a stream inside a crash-guard breadcrumb."""
        return self.guard.guarded("loop", stream_component(runner.name), doing, step)

    def _reload(self) -> None:
        """Apply the live parts of the config file as it is now; keep everything if it does not load."""
        reload.apply(self.config, self._reload_config, self.models.source, self._use_config)

    def _use_config(self, config: AgentConfig) -> None:
        self.config = config
        assert self.fieldops is not None
        self.fieldops.use_config(config)
        self.reporter.use_config(config)

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
