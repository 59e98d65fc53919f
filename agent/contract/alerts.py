"""Messages the agent publishes: alert events, presence and heartbeats (versioned JSON).

Every payload carries ``schema_version``. An alert event's ``event_id`` is derived
from the robot, stream, model, alert head, window and state, so replaying the same
input yields the same ids and subscribers can de-duplicate. All events of one
alert episode (raised → updated → cleared) share an ``alert_id``: the event id of
the raise.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.contract.manifest import Severity

ALERT_SCHEMA_VERSION: Final = "1.1"
"""1.1 added the optional ``contributors`` (the model's own attribution); 1.0 events still parse."""
PRESENCE_SCHEMA_VERSION: Final = "1.0"
HEARTBEAT_SCHEMA_VERSION: Final = "1.1"
"""1.1 added the optional ``model_candidate`` and ``model_events``; 1.0 heartbeats still parse."""

AlertState = Literal["raised", "updated", "cleared"]


def derive_event_id(
    robot_id: str,
    stream: str,
    model_label: str,
    component: str,
    failure_mode: str,
    window_index: int,
    state: AlertState,
) -> str:
    """A stable id: the same input window and model always give the same id."""
    key = "|".join((robot_id, stream, model_label, component, failure_mode, str(window_index), state))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class FeatureContribution(_Message):
    """One unusual feature of the window: its value and z-score against the (healthy) training data."""

    name: str
    channel: str
    statistic: str
    value: float
    z: float = Field(description="(value - training mean) / training std")


class ChannelContribution(_Message):
    """One channel that drove the model's score: how far the score falls without that channel's signal.

    ``score_without`` is the model's score for the same window with every feature of
    the channel replaced by the healthy reference (moved into the range the healthy
    training windows span); ``score_drop`` is how much better that is than the
    event's score (positive: the channel pushed the score towards the alert).
    """

    channel: str
    score_drop: float = Field(description="Improvement of the score when the channel looks healthy.")
    score_without: float = Field(
        description="The score with this channel's features at the healthy reference."
    )


class WindowRef(_Message):
    """Where the scored window came from."""

    index: int = Field(ge=0, description="Window number within the stream.")
    start: float = Field(description="Timestamp of the first sample, epoch seconds.")
    end: float = Field(description="Timestamp of the last sample, epoch seconds.")
    source_file: str
    byte_start: int = Field(ge=0, description="Offset of the window's first line in source_file.")
    byte_end: int = Field(ge=0, description="Offset just past the window's last line.")


class ModelRef(_Message):
    """The model that produced a score."""

    id: str
    version: int


class AlertEvent(_Message):
    """One event of an alert's life cycle, published QoS 1 to ``…/<robot>/alerts``."""

    schema_version: Literal["1.0", "1.1"] = ALERT_SCHEMA_VERSION  # 1.0 from agents not yet upgraded
    event_id: str
    alert_id: str = Field(description="The event_id of the raise that opened this alert.")
    robot_id: str
    site: str
    stream: str
    component: str
    failure_mode: str
    state: AlertState
    severity: Severity | None = Field(description="None once cleared.")
    score: float
    threshold: float = Field(description="The threshold the score was compared with.")
    window: WindowRef
    model: ModelRef
    top_features: tuple[FeatureContribution, ...] = Field(
        default=(),
        description="The window's most unusual features: largest |z| against the healthy training windows "
        "(all training windows for models without a healthy reference).",
    )
    contributors: tuple[ChannelContribution, ...] = Field(
        default=(),
        description="Raised and updated events: the channels whose features, set to the healthy reference, "
        "lower the score most, largest drop first (only channels that lower it).",
    )
    agent_version: str
    replayed: bool = Field(description="Raised while catching up on a backlog, not live.")
    emitted_at: datetime


class Presence(_Message):
    """Retained presence on ``…/<robot>/status``; also the last will ("offline")."""

    schema_version: Literal["1.0"] = PRESENCE_SCHEMA_VERSION
    robot_id: str
    site: str
    state: Literal["online", "offline"]
    agent_version: str
    since: datetime | None = None
    reason: str = ""


class Heartbeat(_Message):
    """Periodic counters on ``…/<robot>/heartbeat``."""

    schema_version: Literal["1.0", "1.1"] = HEARTBEAT_SCHEMA_VERSION  # 1.0 from agents not yet upgraded
    robot_id: str
    site: str
    sent_at: datetime
    uptime_s: float
    lines: int
    windows: int
    alerts: int
    quarantined: int
    outbox_depth: int
    outbox_oldest_age_s: float | None
    model: ModelRef | None
    drift: str = "unknown"
    agent_version: str
    outbox_bytes: int = Field(default=0, description="Bytes of topics and payloads waiting in the outbox.")
    outbox_dropped: dict[str, int] = Field(
        default_factory=dict,
        description="Messages the outbox dropped, by '<kind>:<reason>' (e.g. 'heartbeat:full').",
    )
    alerts_suppressed: dict[str, int] = Field(
        default_factory=dict, description="Alert events the policy's rate limits held back, by reason."
    )
    model_candidate: ModelRef | None = Field(
        default=None, description="A newer model on probation (shadow-scored, not driving alerts), if any."
    )
    model_events: dict[str, int] = Field(
        default_factory=dict,
        description="Model life-cycle events since the agent started, by state: 'probation', 'rolled_back',"
        " 'rejected' (each also sent, not retained, on …/model).",
    )
