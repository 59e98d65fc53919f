"""What the running agent tells the world about itself: heartbeats, ``health.json``, the status file.

`Reporter` reads the parts the daemon runs (its stream runners, the model life
cycle, the disk, the crash guard, the transport) and turns them into:

* the faults the agent runs degraded under (a failing stream, a full disk, a step
  stuck for too long), on top of the standing faults `agent.health.Health` keeps;
* ``health.json`` and systemd's status line (`Reporter.report`);
* the heartbeat and the messages that follow it (metrics textfile, drift reports):
  queued with the next commit, or on a full disk handed straight to the transport
  (`Reporter.heartbeat`);
* the status file ``robotpm-agent status`` reads, while running and at the stop
  (`Reporter.refresh_status`, `Reporter.stopped`);
* the systemd watchdog's food, once a tick (`Reporter.alive`), and the offline
  farewell to the broker at the stop (`Reporter.farewell`).

It decides nothing about the loop: the daemon says when.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent import __version__
from agent.config import AgentConfig
from agent.contract.alerts import ModelRef
from agent.contract.topics import RobotTopics
from agent.crashguard import CrashGuard, stream_component
from agent.errors import PublishError
from agent.health import HEALTH_FILE, AgentState, Health
from agent.models.lifecycle import ModelLifecycle
from agent.outbox import Outbox
from agent.publish import telemetry
from agent.sdnotify import Notifier
from agent.seams import Clock, OutboundMessage, Transport
from agent.state import DiskSpace
from agent.streams.runner import StreamRunner
from agent.technician.operations import FieldOperations, model_view
from agent.technician.statusfile import BrokerStatus, ModelStatusView


@dataclass(eq=False)
class Reporter:
    """The agent's account of itself. `open` it at the start, `attach` the parts the start opened."""

    config: AgentConfig
    topics: RobotTopics
    clock: Clock
    notifier: Notifier
    guard: CrashGuard
    disk: DiskSpace
    models: ModelLifecycle
    streams: Sequence[StreamRunner]
    """The daemon's stream runners (the list it fills at the start)."""
    started_at: float = 0.0
    health: Health = field(init=False)
    """``health.json``, written through this reporter."""
    _last_watchdog: float = field(default=0.0, init=False)
    _running: tuple[Outbox, FieldOperations, Transport] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        refresh_s = self.config.heartbeat_interval_s
        self.health = Health(self.config.state_dir / HEALTH_FILE, self.notifier, refresh_s=refresh_s)

    def open(self, started_at: float) -> None:
        """Say the agent is starting, and what the crash guard skips at this start."""
        self.started_at = started_at
        self.health.open()
        for component, reason in self.guard.blamed.items():
            self.health.standing(component, f"skipped at start: {reason}")
        self.health.update("starting", {}, self.clock.wall(), force=True)

    def attach(self, outbox: Outbox, fieldops: FieldOperations, transport: Transport) -> None:
        """The parts a running agent reports on, once the start has opened them."""
        self._running = (outbox, fieldops, transport)

    @property
    def attached(self) -> bool:
        """Whether `attach` was called (the start got as far as the transport)."""
        return self._running is not None

    def close(self) -> None:
        """Say the agent stopped."""
        self.health.close(self.clock.wall())

    def use_config(self, config: AgentConfig) -> None:
        """Report under a reloaded config."""
        self.config = config

    def faults(self) -> dict[str, str]:
        """What the agent runs degraded under now (besides the standing faults of `health`)."""
        faults = {stream_component(s.name): reason for s in self.streams if (reason := s.degraded_reason())}
        if self.disk.full:
            faults["disk"] = self.disk.describe()
        for component, doing in self.guard.stuck().items():
            faults[component] = f"stuck {doing}"
        return faults

    def report(self, state: AgentState, *, force: bool = False) -> None:
        """Write ``health.json``; forget a stream the agent died in earlier that has worked since."""
        self.health.update(state, self.faults(), self.clock.wall(), force=force)
        remembered = self.guard.remembered()
        for s in self.streams:
            if s.healthy_steps and stream_component(s.name) in remembered:
                self.guard.forget(stream_component(s.name))

    def heartbeat(self) -> list[OutboundMessage]:
        """The heartbeat and its followers to queue; on a full disk, sent directly (best effort) instead."""
        outbox, fieldops, transport = self._parts()
        counters = [s.pipeline.counters for s in self.streams]
        suppressed: dict[str, int] = {}
        for s in self.streams:
            for reason, count in s.pipeline.policy_counters().get("suppressed", {}).items():
                suppressed[reason] = suppressed.get(reason, 0) + int(count)
        manifest = self.models.current.manifest
        probation = self.models.probation
        candidate = probation.candidate.manifest if probation is not None else None
        record = telemetry.heartbeat_record(
            robot_id=self.config.robot_id,
            site=self.config.site,
            now=self.clock.wall(),
            uptime_s=self.clock.monotonic() - self.started_at,
            counters={
                "lines": sum(c.lines for c in counters),
                "windows": sum(c.windows for c in counters),
                "alerts": sum(c.alerts for c in counters),
                "quarantined": sum(c.quarantined for c in counters),
            },
            outbox=outbox,
            model=ModelRef(id=manifest.model_id, version=manifest.version),
            agent_version=__version__,
            suppressed=suppressed,
            drift=self.drift(),
            model_candidate=(
                ModelRef(id=candidate.model_id, version=candidate.version) if candidate is not None else None
            ),
            model_events=self.models.events,
            drift_streams=fieldops.drift_summaries(self.streams),
            faults={**self.health.faults, **self.faults()},
        )
        followers = fieldops.on_heartbeat(
            record,
            streams=self.streams,
            broker_connected=transport.connected,
            model=ModelRef(id=manifest.model_id, version=manifest.version),
        )
        message = telemetry.heartbeat_message(self.topics, record)
        self.health.update("running", self.faults(), self.clock.wall(), force=True)
        if not self.disk.full:
            return [*followers, message]
        if transport.connected:
            with contextlib.suppress(PublishError):  # the outbox cannot take it: straight out, unawaited
                transport.send(message)
        return []

    def refresh_status(self, now: float) -> None:
        """Rewrite the status file (and what goes with it) when it is due."""
        self._parts()[1].refresh_status(
            now,
            streams=self.streams,
            broker=self.broker_status(),
            model=self.model_status(),
            uptime_s=now - self.started_at,
            drift=self.drift(),
        )

    def stopped(self) -> None:
        """Write the last status file: the agent stopped cleanly."""
        self._parts()[1].stopped(
            streams=self.streams,
            broker=self.broker_status(),
            model=self.model_status(),
            uptime_s=self.clock.monotonic() - self.started_at,
        )

    def broker_status(self) -> BrokerStatus:
        """The broker connection as the status file shows it."""
        mqtt = self.config.mqtt
        transport = self._parts()[2]
        return BrokerStatus(
            connected=transport.connected,
            host=mqtt.host,
            port=mqtt.port,
            last_error=str(getattr(transport, "last_error", "") or ""),
        )

    def model_status(self) -> ModelStatusView:
        """The model in use and any candidate on probation, as the status file shows them."""
        manifest = self.models.current.manifest
        ref = ModelRef(id=manifest.model_id, version=manifest.version)
        return model_view(ref, manifest.label, self.models.probation, self.config.model.probation_windows)

    def drift(self) -> str:
        """The agent's drift state over all its streams."""
        return worst_drift([s.pipeline.drift.state for s in self.streams])

    def alive(self, now: float) -> None:
        """Feed systemd's watchdog when due: the loop calls it once a tick, so a stalled loop starves it."""
        interval = self.notifier.watchdog_interval_s  # half of WatchdogSec
        # Ping a little early: a tick ends at most poll_interval_s late, and the gap must stay
        # under half of WatchdogSec even on a loaded machine.
        if interval is not None and now - self._last_watchdog >= 0.75 * interval:
            self._last_watchdog = now
            self.notifier.watchdog()

    def farewell(self) -> list[OutboundMessage]:
        """The last word to the broker: this robot's agent went offline because it stopped."""
        offline = telemetry.presence(
            self.config.robot_id,
            self.config.site,
            "offline",
            __version__,
            since=self.clock.wall(),
            reason="stopped",
        )
        return [telemetry.presence_message(self.topics, offline)]

    def _parts(self) -> tuple[Outbox, FieldOperations, Transport]:
        if self._running is None:
            raise RuntimeError("the reporter reports on a running agent: attach its parts first")
        return self._running


def worst_drift(states: Sequence[str]) -> str:
    """Drifting if any stream drifts, else ok if any stream knows, else unknown."""
    if "drifting" in states:
        return "drifting"
    return "ok" if "ok" in states else "unknown"
