"""Builders of the messages the agent publishes besides alerts: presence, heartbeat, model status."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from agent.contract.alerts import AlertEvent, Heartbeat, ModelRef, Presence
from agent.contract.manifest import ModelManifest
from agent.contract.topics import RobotTopics
from agent.seams import OutboundMessage

MODEL_STATUS_SCHEMA_VERSION = "1.0"


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


def model_status(
    robot_id: str,
    site: str,
    manifest: ModelManifest,
    *,
    state: str = "active",
    since: float | None = None,
    detail: str = "",
) -> dict[str, Any]:
    """The retained model status payload: which model the robot runs, and since when."""
    return {
        "schema_version": MODEL_STATUS_SCHEMA_VERSION,
        "robot_id": robot_id,
        "site": site,
        "state": state,
        "model": ModelRef(id=manifest.model_id, version=manifest.version).model_dump(),
        "feature_spec_hash": manifest.feature_spec_hash,
        "sha256": manifest.sha256,
        "channel": manifest.channel,
        "since": None if since is None else datetime.fromtimestamp(since, tz=timezone.utc).isoformat(),
        "detail": detail,
    }


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
