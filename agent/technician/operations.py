"""The daemon's field-operations side: journal every event, gate it by the shelves, refresh the status file.

The daemon owns one `FieldOperations` and calls it at four points:

* `wrap` each stream's policy at start (`agent.technician.recorder`);
* `admit` the alert events of a tick **inside** its transaction: each is journaled
  and logged, and only those no shelf withholds come back as outbox messages;
* `step` once a tick: at most every `REQUEST_POLL_S` it ends expired shelves,
  applies the shelve requests waiting in the control directory, and publishes the
  alerts a shelf withheld that are still open once that shelf ended;
* `refresh_status` each tick (written every `refresh_s`), `stopped` at the end;
* `on_heartbeat`: drift reports and the metrics textfile (`agent.technician.fleetview`).

The retained open-alerts view is re-sent with every tick that had alert events,
every shelve change, and at start (`open_alerts_message`).

Every raise, update, clear, shelve and unshelve is logged with the robot, stream
and model bound (``structlog.contextvars``), so the local log reads as an alarm log.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from agent import __version__
from agent.config import AgentConfig
from agent.contract.alerts import AlertEvent, Heartbeat, ModelRef, OpenAlerts, StreamDrift
from agent.contract.topics import RobotTopics
from agent.journal import AlertJournal, read_entry
from agent.metrics import LatencyHistogram
from agent.outbox import Outbox
from agent.publish import telemetry
from agent.seams import Clock, OutboundMessage
from agent.state import StateStore
from agent.technician.control import ControlDir, removing, write_atomic
from agent.technician.fleetview import FleetView
from agent.technician.recorder import ExplainingPolicy
from agent.technician.shelving import Shelf, ShelveResult, Shelving
from agent.technician.statusfile import (
    AgentStatus,
    BrokerStatus,
    ModelStatusView,
    ModelUpdate,
    OutboxStatus,
    StreamStatus,
    disk_status,
    stream_lag_bytes,
    utc,
    write_status,
)

log = structlog.get_logger("robotpm.alarms")

REQUEST_POLL_S: Final = 1.0
MAX_STATUS_REFRESH_S: Final = 10.0


class StreamView(Protocol):
    """What the status file needs of a stream runner (`agent.streams.runner.StreamRunner`)."""

    @property
    def name(self) -> str:
        """The stream's name."""

    @property
    def position(self) -> dict[str, Any]:
        """The follower's state as of the last line processed."""

    @property
    def pipeline(self) -> Any:
        """The stream's pipeline (counters, last sample time)."""


def control_dir(config: AgentConfig) -> ControlDir:
    """The control directory the config names (default ``<state_dir>/control``)."""
    return ControlDir(config.control.directory or config.state_dir / "control")


class FieldOperations:
    """Journal, shelves and status file of one running agent; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        store: StateStore,
        outbox: Outbox,
        topics: RobotTopics,
        clock: Clock,
    ) -> None:
        self.config = config
        self._store = store
        self._outbox = outbox
        self._topics = topics
        self._clock = clock
        self.journal = AlertJournal(store, config.journal, outbox.running_s)
        self.shelving = Shelving(store, config.shelving, wall=clock.wall, running_s=outbox.running_s)
        self.control = control_dir(config)
        self.fleet = FleetView(config, topics)
        self.inference = LatencyHistogram()
        """Seconds per scoring call over every stream (for the metrics file)."""
        self._policies: list[ExplainingPolicy] = []
        self._next_poll = 0.0
        self._last_status = float("-inf")
        self._status_due = True
        """Something the status file shows changed (alerts, shelves): rewrite it at the next tick."""
        self._model_label = ""
        self.last_update: ModelUpdate | None = None
        self.requests_refused = 0
        structlog.contextvars.bind_contextvars(robot=config.robot_id, site=config.site)
        for problem in self.control.prepare(config.control.group):
            log.warning("control_directory_problem", problem=problem)

    @property
    def refresh_s(self) -> float:
        """How often the status file is rewritten: each heartbeat, at least every 10 s."""
        return min(self.config.heartbeat_interval_s, MAX_STATUS_REFRESH_S)

    def use_config(self, config: AgentConfig) -> None:
        """Apply the live parts of a reloaded config (journal bounds, shelving limits)."""
        self.config = config
        self.journal.use_config(config.journal)
        self.shelving.use_config(config.shelving)
        self.fleet.use_config(config)
        for policy in self._policies:
            policy.inner.use_config(config.policy)

    def wrap(self, policy: Any) -> ExplainingPolicy:
        """The stream's policy, wrapped so each event's context reaches the journal."""
        wrapped = ExplainingPolicy(policy, score_history=self.config.journal.score_history)
        self._policies.append(wrapped)
        return wrapped

    def bind_model(self, label: str) -> None:
        """Bind the model now scoring to every later log line (cheap when unchanged)."""
        if label != self._model_label:
            self._model_label = label
            structlog.contextvars.bind_contextvars(model=label)

    def note_model_messages(self, messages: Sequence[OutboundMessage]) -> None:
        """Remember the last model life-cycle outcome from the model status messages of a tick."""
        for message in messages:
            if message.kind != "model":
                continue
            body = telemetry_json(message.payload)
            state = str(body.get("state", "active"))
            model = body.get("model") or {}
            label = f"{model.get('id')}@{model.get('version')}" if model else body.get("source")
            self.last_update = ModelUpdate(
                state="live" if state == "active" else state,
                model=None if label is None else str(label),
                detail=str(body.get("detail", "")),
                at=body.get("since"),
            )

    def admit(self, conn: sqlite3.Connection, events: Sequence[AlertEvent]) -> list[OutboundMessage]:
        """Journal `events` in the caller's transaction; the outbox messages of those not withheld."""
        if not events:
            return []
        contexts: dict[str, dict[str, Any]] = {}
        for policy in self._policies:
            contexts.update(policy.take_contexts())
        seen = {a.alert_id: a.published for a in self.journal.open_alerts()}
        out: list[OutboundMessage] = []
        for event in events:
            shelf = self.shelving.covering(event)
            published = self.shelving.publishes(event, shelf, seen.get(event.alert_id, False))
            fresh = self.journal.record(
                conn,
                event,
                contexts.get(event.event_id),
                published=published,
                shelf=None if shelf is None else shelf.model_dump(mode="json"),
            )
            if fresh:
                _log_event(event, published, shelf)
            seen[event.alert_id] = seen.get(event.alert_id, False) or published
            if published:
                out.append(telemetry.alert_message(self._topics, event))
        self.journal.retain(conn)
        self._status_due = True
        out.append(self.open_alerts_message())
        return out

    def open_alerts_message(self) -> OutboundMessage:
        """The retained view of every open alert now, shelved ones marked."""
        policies = [p.inner for p in self._policies]
        return self.fleet.open_alerts(policies, self.shelving, self._clock.wall())

    def on_heartbeat(
        self,
        heartbeat: Heartbeat,
        *,
        streams: Sequence[StreamView],
        broker_connected: bool,
        model: ModelRef,
    ) -> list[OutboundMessage]:
        """Each heartbeat: write the metrics textfile; returns the drift reports due."""
        pipelines = [s.pipeline for s in streams]
        wall = self._clock.wall()
        self.fleet.write_metrics(
            heartbeat,
            pipelines,
            {s.name: _stream_status(s, wall) for s in streams},
            broker_connected=broker_connected,
            inference=self.inference,
            open_alerts=telemetry_open_alerts(self.open_alerts_message()),
        )
        return self.fleet.drift_reports(pipelines, model, wall)

    def drift_summaries(self, streams: Sequence[StreamView]) -> dict[str, StreamDrift]:
        """Each stream's drift for the heartbeat."""
        return self.fleet.drift_summaries([s.pipeline for s in streams])

    def step(self, now: float) -> None:
        """End expired shelves, apply waiting requests, publish what an ended shelf withheld."""
        if now < self._next_poll:
            return
        self._next_poll = now + REQUEST_POLL_S
        pending = self.control.pending()
        if not pending and not self.shelving.shelves:
            return
        unsafe = self.control.unsafe() if pending else None
        answers: list[tuple[Path, ShelveResult]] = []
        with self._store.transaction() as conn:
            ended = self.shelving.expire(conn)
            for shelf in ended:
                log.info("shelve_expired", **_shelf_fields(shelf))
            for path in pending:
                answers.append((path, self._handle(conn, path, unsafe)))
            released = self._release(conn)
            if ended or answers:
                self._status_due = True
                released.append(self.open_alerts_message())
            self._outbox.enqueue(conn, released)
        for path, result in answers:
            with removing(path):
                try:
                    write_atomic(
                        self.control.result_path(result.request_id), result.model_dump_json().encode()
                    )
                except OSError as exc:
                    log.warning("shelve_result_not_written", request=result.request_id, error=str(exc))

    def refresh_status(
        self,
        now: float,
        *,
        streams: Sequence[StreamView],
        broker: BrokerStatus,
        model: ModelStatusView,
        uptime_s: float,
        drift: str,
        force: bool = False,
    ) -> None:
        """Rewrite the status file if a refresh period passed, alerts or shelves changed, or `force`."""
        if not (force or self._status_due) and now - self._last_status < self.refresh_s:
            return
        self._last_status = now
        self._status_due = False
        self._write("running", streams=streams, broker=broker, model=model, uptime_s=uptime_s, drift=drift)

    def stopped(
        self, *, streams: Sequence[StreamView], broker: BrokerStatus, model: ModelStatusView, uptime_s: float
    ) -> None:
        """Write the last status file: the agent stopped cleanly."""
        self._write(
            "stopped", streams=streams, broker=broker, model=model, uptime_s=uptime_s, drift="unknown"
        )

    # -- internals ---------------------------------------------------------------------------------

    def _handle(self, conn: sqlite3.Connection, path: Path, unsafe: str | None) -> ShelveResult:
        request_id = path.stem
        if unsafe is not None:
            self.requests_refused += 1
            log.warning("shelve_request_refused", request=request_id, reason=unsafe)
            return ShelveResult(request_id=request_id, ok=False, detail=f"refused: {unsafe}")
        try:
            body, owner = self.control.read_request(path)
        except (OSError, ValueError) as exc:
            self.requests_refused += 1
            log.warning("shelve_request_refused", request=request_id, reason=str(exc))
            return ShelveResult(request_id=request_id, ok=False, detail=f"refused: {exc}")
        result = self.shelving.handle(conn, body, owner)
        if not result.ok:
            self.requests_refused += 1
            log.warning("shelve_request_refused", request=result.request_id, reason=result.detail)
        for shelf in result.shelves:
            log.info(f"alert_{result.action}d", **_shelf_fields(shelf))
        return result

    def _release(self, conn: sqlite3.Connection) -> list[OutboundMessage]:
        """The withheld events of open alerts no shelf covers any more, marked published."""
        out: list[OutboundMessage] = []
        for alert in self.journal.open_alerts():
            ids = [alert.raised_event] + (
                [alert.last_event] if alert.last_event != alert.raised_event else []
            )
            entries = [e for e in (read_entry(conn, i) for i in ids) if e is not None and not e.published]
            if not entries or self.shelving.covering(entries[-1].event) is not None:
                continue
            for entry in entries:
                self.journal.mark_published(conn, alert.alert_id, entry.event.event_id)
                out.append(telemetry.alert_message(self._topics, entry.event))
            log.info(
                "alert_released",
                stream=alert.stream,
                alert_id=alert.alert_id,
                component=alert.component,
                failure_mode=alert.failure_mode,
                severity=alert.severity,
            )
        return out

    def _write(
        self,
        state: str,
        *,
        streams: Sequence[StreamView],
        broker: BrokerStatus,
        model: ModelStatusView,
        uptime_s: float,
        drift: str,
    ) -> None:
        wall = self._clock.wall()
        opened = self.journal.open_alerts()
        shelved = 0
        for alert in opened:
            shelved += (
                self.shelving.covering_head(alert.stream, alert.component, alert.failure_mode) is not None
            )
        outbox = self._outbox
        status = AgentStatus(
            robot_id=self.config.robot_id,
            site=self.config.site,
            agent_version=__version__,
            pid=os.getpid(),
            state="running" if state == "running" else "stopped",
            written_at=datetime.fromtimestamp(wall, tz=timezone.utc),
            refresh_s=self.refresh_s,
            uptime_s=round(uptime_s, 3),
            broker=broker,
            streams=tuple(_stream_status(s, wall) for s in streams),
            outbox=OutboxStatus(
                depth=outbox.depth(),
                oldest_age_s=outbox.oldest_age_s(),
                bytes=outbox.size_bytes(),
                dropped=outbox.dropped(),
            ),
            open_alerts=len(opened),
            shelved_alerts=shelved,
            shelves=tuple(self.shelving.shelves),
            model=model
            if self.last_update is None
            else model.model_copy(update={"last_update": self.last_update}),
            drift=drift,
            disk=disk_status(self.config.state_dir),
        )
        try:
            write_status(self.control.status, status)
        except OSError as exc:
            log.warning("status_file_not_written", path=str(self.control.status), error=str(exc))


def model_view(current: ModelRef, label: str, probation: Any, needed: int) -> ModelStatusView:
    """The model part of the status file: the current model, the probation (of `needed` windows)."""
    if probation is None:
        return ModelStatusView(current=current, label=label)
    return ModelStatusView(
        current=current,
        label=label,
        candidate=probation.candidate.manifest.label,
        candidate_windows=int(probation.windows),
        candidate_windows_needed=needed,
    )


def telemetry_open_alerts(message: OutboundMessage) -> OpenAlerts:
    """The open-alerts record back from its message (for the metrics file)."""
    return OpenAlerts.model_validate_json(message.payload)


def telemetry_json(payload: bytes) -> dict[str, Any]:
    """A telemetry payload as a dict ({} when it is not a JSON object)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _stream_status(stream: StreamView, wall: float) -> StreamStatus:
    lag_bytes, files = stream_lag_bytes(stream.position)
    counters = stream.pipeline.counters
    last_ts = stream.pipeline.state().get("last_ts")
    degraded: Callable[[], str | None] | str | None = getattr(stream, "degraded_reason", None)
    return StreamStatus(
        name=stream.name,
        lag_bytes=lag_bytes,
        lag_s=None if last_ts is None else round(max(0.0, wall - float(last_ts)), 3),
        last_sample=utc(None if last_ts is None else float(last_ts)),
        files=files,
        degraded=degraded() if callable(degraded) else degraded,
        lines=counters.lines,
        windows=counters.windows,
        alerts=counters.alerts,
        quarantined=counters.quarantined,
    )


def _shelf_fields(shelf: Shelf) -> dict[str, Any]:
    return {
        "shelf": shelf.id,
        "kind": shelf.kind,
        "target": shelf.target(),
        "stream": shelf.stream,
        "alert_id": shelf.alert_id,
        "reason": shelf.reason,
        "by": shelf.by,
        "until": shelf.until.isoformat(timespec="seconds"),
    }


def _log_event(event: AlertEvent, published: bool, shelf: Shelf | None) -> None:
    log.info(
        f"alert_{event.state}",
        stream=event.stream,
        model=f"{event.model.id}@{event.model.version}",
        alert_id=event.alert_id,
        event_id=event.event_id,
        component=event.component,
        failure_mode=event.failure_mode,
        severity=event.severity,
        score=round(event.score, 6),
        threshold=event.threshold,
        window=event.window.index,
        replayed=event.replayed,
        published=published,
        shelf=None if shelf is None else shelf.id,
    )
