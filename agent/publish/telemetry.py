"""Builders of the messages the agent publishes besides alerts: presence, heartbeat, model status."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from agent.contract.alerts import AlertEvent, Heartbeat, ModelRef, Presence
from agent.contract.manifest import ModelManifest
from agent.contract.topics import RobotTopics
from agent.seams import OutboundMessage

if TYPE_CHECKING:
    from agent.outbox import Outbox

MODEL_STATUS_SCHEMA_VERSION: Literal["1.0"] = "1.0"


def alert_message(topics: RobotTopics, event: AlertEvent) -> OutboundMessage:
    """An alert event as an outbox message: key = event_id, QoS 1, not retained."""
    return OutboundMessage(
        key=event.event_id,
        kind="alert",
        topic=topics.alerts,
        payload=event.model_dump_json().encode(),
        qos=1,
        retain=False,
    )


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
    return OutboundMessage(
        key="status",
        kind="status",
        topic=topics.status,
        payload=record.model_dump_json().encode(),
        qos=1,
        retain=True,
    )


def heartbeat_message(topics: RobotTopics, record: Heartbeat) -> OutboundMessage:
    """A heartbeat as a retained QoS 1 message on ``…/heartbeat`` (new subscribers see the latest).

    The key is the send time, so two heartbeats never collapse into one row and a
    backlog of heartbeats is dropped oldest first when the outbox is full.
    """
    return OutboundMessage(
        key=f"heartbeat:{record.sent_at.timestamp():.6f}",
        kind="heartbeat",
        topic=topics.heartbeat,
        payload=record.model_dump_json().encode(),
        qos=1,
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
) -> Heartbeat:
    """A complete heartbeat: pipeline counters, outbox depth, age, size and drops, model, drift.

    ``counters`` holds ``lines``, ``windows``, ``alerts`` and ``quarantined`` (missing
    ones count as 0); ``suppressed`` the policy's held-back events by reason.
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
    )


class ModelStatus(BaseModel):
    """Retained on ``…/<robot>/model``: the model a robot runs, and since when."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    schema_version: Literal["1.0"] = MODEL_STATUS_SCHEMA_VERSION
    robot_id: str
    site: str
    state: Literal["active", "probation", "rolled_back", "rejected"] = "active"
    model: ModelRef
    feature_spec_hash: str
    sha256: str
    channel: str
    since: datetime | None = None
    detail: str = ""


def model_status(
    robot_id: str,
    site: str,
    manifest: ModelManifest,
    *,
    state: str = "active",
    since: float | None = None,
    detail: str = "",
) -> dict[str, Any]:
    """The retained model status payload (a `ModelStatus` as JSON data)."""
    record = ModelStatus.model_validate(
        {
            "robot_id": robot_id,
            "site": site,
            "state": state,
            "model": ModelRef(id=manifest.model_id, version=manifest.version),
            "feature_spec_hash": manifest.feature_spec_hash,
            "sha256": manifest.sha256,
            "channel": manifest.channel,
            "since": None if since is None else datetime.fromtimestamp(since, tz=timezone.utc),
            "detail": detail,
        }
    )
    return record.model_dump(mode="json")


def model_status_message(
    topics: RobotTopics,
    robot_id: str,
    site: str,
    manifest: ModelManifest,
    *,
    state: str = "active",
    since: float | None = None,
    detail: str = "",
) -> OutboundMessage:
    """The model status as a retained QoS 1 message on ``…/model``; the newest replaces older rows."""
    body = model_status(robot_id, site, manifest, state=state, since=since, detail=detail)
    return OutboundMessage(
        key="model",
        kind="model",
        topic=topics.model,
        payload=json.dumps(body, separators=(",", ":")).encode(),
        qos=1,
        retain=True,
    )
