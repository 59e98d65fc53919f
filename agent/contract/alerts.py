"""Messages the agent publishes: alert events, open alerts, presence, heartbeats, drift (versioned JSON).

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
HEARTBEAT_SCHEMA_VERSION: Final = "1.3"
"""1.1 added ``model_candidate`` and ``model_events``, 1.2 ``drift_streams``, 1.3 ``faults``; older parse."""
OPEN_ALERTS_SCHEMA_VERSION: Final = "1.0"
DRIFT_SCHEMA_VERSION: Final = "1.0"

DriftState = Literal["unknown", "ok", "drifting"]

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
    # defer_build: a message's validator is built when first used, so the kinds this agent never
    # sends or reads (most of them, on a quiet robot) cost no memory (bench/bench_memory.py).
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), defer_build=True)


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


class StreamDrift(_Message):
    """One stream's drift in a heartbeat: its state and its most drifted feature."""

    state: DriftState
    drifting_features: int = Field(ge=0)
    max_psi: float | None = Field(description="Largest PSI of any feature; None before PSI is judged.")
    max_shift: float | None = Field(description="Largest |mean shift| of any feature, in training stds.")
    top_feature: str | None = Field(description="The most drifted feature, if any window was seen.")


class Heartbeat(_Message):
    """Periodic counters on ``…/<robot>/heartbeat``."""

    schema_version: Literal["1.0", "1.1", "1.2", "1.3"] = (
        HEARTBEAT_SCHEMA_VERSION  # older from agents not upgraded
    )
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
        " 'rejected', 'expired' (each also sent, not retained, on …/model).",
    )
    drift_streams: dict[str, StreamDrift] = Field(
        default_factory=dict,
        description="Drift per stream (details in the reports on …/drift); 'drift' is the worst.",
    )
    faults: dict[str, str] = Field(
        default_factory=dict,
        description="What the agent runs degraded under, each with a one-line reason, by what it concerns: "
        "'stream:<name>' (failing, skipped, directory missing), 'disk' (full: reading paused, nothing lost), "
        "'state' (a damaged state file moved aside), 'model:<directory>' (skipped: it killed the agent), "
        "'start'. Empty when all is well.",
    )


class OpenAlert(_Message):
    """One alert that is open (raised, not cleared) on a robot."""

    alert_id: str = Field(description="The event_id of the raise; later events of the alert carry it too.")
    stream: str
    component: str
    failure_mode: str
    severity: Severity
    score: float = Field(description="The latest score of the alert's head.")
    raised_window: int = Field(ge=0, description="Index of the window that raised it.")
    last_event_time: float = Field(
        description="Data time (window end, epoch seconds) of its raise or update."
    )
    model: ModelRef
    shelved: bool = Field(default=False, description="Shelved by a technician: kept, not re-raised.")
    shelved_until: datetime | None = None
    shelve_reason: str = ""


class OpenAlerts(_Message):
    """Retained on ``…/<robot>/open_alerts``: every open alert of the robot, replaced on each change.

    A subscriber that (re)starts reads the robot's open alerts from here instead of
    replaying every event; an empty ``alerts`` means none is open.
    """

    schema_version: Literal["1.0"] = OPEN_ALERTS_SCHEMA_VERSION
    robot_id: str
    site: str
    updated_at: datetime
    count: int = Field(ge=0, description="len(alerts)")
    worst_severity: Severity | None = Field(description="critical if any alert is, else warning, else None.")
    alerts: tuple[OpenAlert, ...] = ()


class FeatureDriftRecord(_Message):
    """One feature in a drift report."""

    name: str
    psi: float | None = Field(description="PSI against the training quantile bins; None if not judged.")
    shift: float = Field(description="(running mean - training mean) / training std")
    drifting: bool


class DriftThresholds(_Message):
    """The thresholds a drift report was judged with ([agent.drift])."""

    psi_raise: float
    psi_clear: float
    shift_raise: float
    shift_clear: float
    min_features: int


class DriftReport(_Message):
    """A stream's drift against the model's training data, QoS 1 on ``…/<robot>/drift``.

    Sent when the stream's drift state changes and periodically while it drifts. A
    feature drifts when its PSI and its mean shift both pass their raise thresholds
    (the shift alone without PSI), with hysteresis; ``retrain`` asks the trainer's
    stream mode for a retraining (true while drifting).
    """

    schema_version: Literal["1.0"] = DRIFT_SCHEMA_VERSION
    robot_id: str
    site: str
    stream: str
    model: ModelRef
    state: DriftState
    windows: int = Field(ge=0, description="Windows judged since the model went live (or the agent started).")
    effective_windows: float = Field(ge=0, description="Size of the decayed sample the statistics describe.")
    drifting_features: int = Field(ge=0)
    features: tuple[FeatureDriftRecord, ...] = Field(description="The most drifted features first.")
    thresholds: DriftThresholds
    retrain: bool
    sent_at: datetime
