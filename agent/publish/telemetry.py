"""Builders of the messages the agent publishes besides alerts: presence, heartbeat, model status, drift.

Also the retained open-alerts view. Each takes the daemon's objects and returns a
record or an `OutboundMessage`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from agent.contract.alerts import (
    AlertEvent,
    DriftReport,
    DriftThresholds,
    FeatureDriftRecord,
    Heartbeat,
    ModelRef,
    OpenAlert,
    OpenAlerts,
    Presence,
    StreamDrift,
)
from agent.contract.manifest import ModelManifest
from agent.contract.topics import RobotTopics
from agent.seams import MessageKind, OutboundMessage

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.outbox import Outbox
    from agent.policy import AlertPolicy
    from agent.streams.drift import DriftMonitor

MODEL_STATUS_SCHEMA_VERSION: Literal["1.1"] = "1.1"
"""1.1: states other than "active" (not retained); model fields optional for them; ``source``."""


def _record_message(
    key: str, kind: MessageKind, topic: str, record: BaseModel, *, retain: bool
) -> OutboundMessage:
    """A record as its JSON, QoS 1."""
    return OutboundMessage(key, kind, topic, record.model_dump_json().encode(), qos=1, retain=retain)


def _body_message(key: str, topic: str, body: dict[str, Any], *, retain: bool) -> OutboundMessage:
    """A model status body as compact JSON on the model topic, QoS 1."""
    return OutboundMessage(
        key, "model", topic, json.dumps(body, separators=(",", ":")).encode(), qos=1, retain=retain
    )


def alert_message(topics: RobotTopics, event: AlertEvent) -> OutboundMessage:
    """An alert event as an outbox message: key = event_id, QoS 1, not retained."""
    return _record_message(event.event_id, "alert", topics.alerts, event, retain=False)


def presence(
    robot_id: str, site: str, state: str, agent_version: str, *, since: float | None = None, reason: str = ""
) -> Presence:
    """A `Presence` record ("online" or "offline")."""
    if state not in ("online", "offline"):
        raise ValueError(f"presence state must be online or offline, got {state!r}")
    return Presence(
        robot_id=robot_id,
        site=site,
        state="online" if state == "online" else "offline",
        agent_version=agent_version,
        since=None if since is None else datetime.fromtimestamp(since, tz=timezone.utc),
        reason=reason,
    )


def presence_message(topics: RobotTopics, record: Presence) -> OutboundMessage:
    """Presence as a retained QoS 1 message on ``…/status``."""
    return _record_message("status", "status", topics.status, record, retain=True)


def heartbeat_message(topics: RobotTopics, record: Heartbeat) -> OutboundMessage:
    """A heartbeat as a retained QoS 1 message on ``…/heartbeat`` (new subscribers see the latest).

    The key is the send time and the uptime (monotonic), so two heartbeats never collapse
    into one row, even when the wall clock was stepped back between them; a backlog of
    heartbeats is dropped oldest first when the outbox is full.
    """
    return _record_message(
        f"heartbeat:{record.sent_at.timestamp():.6f}:{record.uptime_s:.3f}",
        "heartbeat",
        topics.heartbeat,
        record,
        retain=True,
    )


def heartbeat_record(
    *,
    robot_id: str,
    site: str,
    now: float,
    uptime_s: float,
    counters: Mapping[str, int],
    outbox: Outbox,
    model: ModelRef | None,
    agent_version: str,
    drift: str = "unknown",
    suppressed: Mapping[str, int] | None = None,
    model_candidate: ModelRef | None = None,
    model_events: Mapping[str, int] | None = None,
    drift_streams: Mapping[str, StreamDrift] | None = None,
    faults: Mapping[str, str] | None = None,
) -> Heartbeat:
    """A complete heartbeat: pipeline counters, outbox depth, age, size and drops, model, drift.

    ``counters`` holds ``lines``, ``windows``, ``alerts`` and ``quarantined`` (missing
    ones count as 0); ``suppressed`` the policy's held-back events by reason;
    ``model_candidate`` a model on probation; ``model_events`` model life-cycle events by state;
    ``drift_streams`` each stream's `drift_summary`; ``faults`` what the agent runs degraded under.
    """
    return Heartbeat(
        robot_id=robot_id,
        site=site,
        sent_at=datetime.fromtimestamp(now, tz=timezone.utc),
        uptime_s=round(uptime_s, 3),
        lines=int(counters.get("lines", 0)),
        windows=int(counters.get("windows", 0)),
        alerts=int(counters.get("alerts", 0)),
        quarantined=int(counters.get("quarantined", 0)),
        outbox_depth=outbox.depth(),
        outbox_oldest_age_s=outbox.oldest_age_s(),
        outbox_bytes=outbox.size_bytes(),
        outbox_dropped=outbox.dropped(),
        alerts_suppressed=dict(suppressed or {}),
        model=model,
        drift=drift,
        agent_version=agent_version,
        model_candidate=model_candidate,
        model_events=dict(model_events or {}),
        drift_streams=dict(drift_streams or {}),
        faults=dict(faults or {}),
    )


def drift_summary(monitor: DriftMonitor) -> StreamDrift:
    """A stream's drift for the heartbeat: state, drifting features, largest PSI and shift."""
    psi = monitor.psi()
    shifts = monitor.shifts()
    top = monitor.features(1)
    return StreamDrift(
        state=monitor.state,
        drifting_features=monitor.drifting_features,
        max_psi=None if psi is None else round(float(psi.max()), 6),
        max_shift=None if shifts is None else round(float(abs(shifts).max()), 6),
        top_feature=top[0].name if top else None,
    )


def drift_report(
    monitor: DriftMonitor,
    *,
    robot_id: str,
    site: str,
    stream: str,
    model: ModelRef,
    now: float,
    top: int = 10,
) -> DriftReport:
    """A `DriftReport` of one stream's monitor now, naming its `top` most drifted features."""
    config = monitor.config
    return DriftReport(
        robot_id=robot_id,
        site=site,
        stream=stream,
        model=model,
        state=monitor.state,
        windows=monitor.windows,
        effective_windows=round(monitor.effective_windows, 3),
        drifting_features=monitor.drifting_features,
        features=tuple(
            FeatureDriftRecord(name=f.name, psi=f.psi, shift=f.shift, drifting=f.drifting)
            for f in monitor.features(top)
        ),
        thresholds=DriftThresholds(
            psi_raise=config.psi_raise,
            psi_clear=config.psi_clear,
            shift_raise=config.shift_raise,
            shift_clear=config.shift_clear,
            min_features=config.min_features,
        ),
        retrain=monitor.state == "drifting",
        sent_at=datetime.fromtimestamp(now, tz=timezone.utc),
    )


def drift_message(topics: RobotTopics, report: DriftReport) -> OutboundMessage:
    """A drift report, QoS 1, not retained (several streams share the topic) on ``…/drift``."""
    return _record_message(
        f"drift:{report.stream}:{report.sent_at.timestamp():.6f}:{report.windows}",
        "drift",
        topics.drift,
        report,
        retain=False,
    )


def open_alerts_state(
    robot_id: str,
    site: str,
    policies: Sequence[AlertPolicy],
    *,
    now: float,
    shelved: Mapping[str, tuple[datetime | None, str]] | None = None,
) -> OpenAlerts:
    """The robot's open alerts over every stream's policy; `shelved` maps alert ids to (until, reason)."""
    shelves = shelved or {}
    alerts: list[OpenAlert] = []
    for policy in policies:
        for alert in policy.open_alert_records():
            shelf = shelves.get(alert.alert_id)
            if shelf is not None:
                until, reason = shelf
                alert = alert.model_copy(
                    update={"shelved": True, "shelved_until": until, "shelve_reason": reason}
                )
            alerts.append(alert)
    severities = {a.severity for a in alerts}
    return OpenAlerts(
        robot_id=robot_id,
        site=site,
        updated_at=datetime.fromtimestamp(now, tz=timezone.utc),
        count=len(alerts),
        worst_severity="critical" if "critical" in severities else "warning" if severities else None,
        alerts=tuple(alerts),
    )


def open_alerts_message(topics: RobotTopics, record: OpenAlerts) -> OutboundMessage:
    """The open alerts, retained QoS 1 on ``…/open_alerts``; a newer one replaces the queued row.

    Its outbox kind is ``status`` (a retained latest state, replaced by key, like presence).
    """
    return _record_message("open_alerts", "status", topics.open_alerts, record, retain=True)


class ModelStatus(BaseModel):
    """A model's status on ``…/<robot>/model``.

    ``active`` (retained) names the model the robot runs, and since when. ``probation``,
    ``rolled_back`` and ``rejected`` are not retained events about another model: one on
    probation (shadow-scored, not driving alerts), one that failed its probation, one the
    store offered and the agent refused; ``expired`` is about the running model, which has
    passed its ``expires`` (it keeps serving, or a start falls back: ``detail`` says which);
    ``detail`` says why. A refused model whose
    manifest cannot be read has no model fields; ``source`` names its store directory.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    schema_version: Literal["1.1"] = MODEL_STATUS_SCHEMA_VERSION
    robot_id: str
    site: str
    state: Literal["active", "probation", "rolled_back", "rejected", "expired"] = "active"
    model: ModelRef | None = None
    feature_spec_hash: str | None = None
    sha256: str | None = None
    channel: str | None = None
    source: str | None = None
    since: datetime | None = None
    detail: str = ""

    @model_validator(mode="after")
    def _active_names_its_model(self) -> ModelStatus:
        if self.state == "active" and None in (self.model, self.feature_spec_hash, self.sha256, self.channel):
            raise ValueError("an active model status needs model, feature_spec_hash, sha256 and channel")
        return self


def model_status(
    robot_id: str,
    site: str,
    manifest: ModelManifest | None,
    *,
    state: str = "active",
    since: float | None = None,
    detail: str = "",
    source: str | None = None,
) -> dict[str, Any]:
    """A model status payload (a `ModelStatus` as JSON data); `manifest` None only for a refused model."""
    fields: dict[str, Any] = {}
    if manifest is not None:
        fields = {
            "model": ModelRef(id=manifest.model_id, version=manifest.version),
            "feature_spec_hash": manifest.feature_spec_hash,
            "sha256": manifest.sha256,
            "channel": manifest.channel,
        }
    record = ModelStatus.model_validate(
        {
            "robot_id": robot_id,
            "site": site,
            "state": state,
            **fields,
            "source": source,
            "since": None if since is None else datetime.fromtimestamp(since, tz=timezone.utc),
            "detail": detail,
        }
    )
    return record.model_dump(mode="json", exclude_none=True)


def model_status_message(
    topics: RobotTopics, manifest: ModelManifest, *, since: float | None = None, detail: str = ""
) -> OutboundMessage:
    """The active model's status, retained QoS 1 on ``…/model``; the newest replaces older rows.

    The robot id and site in it are those `topics` names.
    """
    body = model_status(topics.robot, topics.site, manifest, state="active", since=since, detail=detail)
    return _body_message("model", topics.model, body, retain=True)


def model_event_message(
    topics: RobotTopics,
    manifest: ModelManifest | None,
    *,
    state: Literal["probation", "rolled_back", "rejected", "expired"],
    since: float,
    detail: str = "",
    source: str | None = None,
) -> OutboundMessage:
    """A probation / rolled_back / rejected / expired status: QoS 1, NOT retained, on ``…/model``.

    The robot id and site in it are those `topics` names. The retained message on that
    topic keeps naming the model the robot runs. The key is unique per event (state,
    model or source, time), so the outbox neither replaces the retained "model" row with
    it nor collapses two events into one row.
    """
    body = model_status(
        topics.robot, topics.site, manifest, state=state, since=since, detail=detail, source=source
    )
    who = manifest.label if manifest is not None else (source or "?")
    return _body_message(f"model:{state}:{who}:{since:.6f}", topics.model, body, retain=False)
