"""The ``--json`` outputs of the technician commands, as pydantic models (their schemas: `agent.schemas`).

Each command builds one of these and prints it as JSON (``--json``) or renders it
as text (`agent.technician.render`), so both forms always say the same thing.
Times are UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.contract.alerts import AlertEvent, ModelRef
from agent.technician.shelving import Shelf, ShelveRequest, ShelveResult
from agent.technician.statusfile import AgentStatus, DiskStatus

VIEW_SCHEMA_VERSION: Final = "1.0"

Verdict = Literal["healthy", "degraded", "not_running"]


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class JournalEventView(_View):
    """One journaled event, and whether it reached the broker."""

    event: AlertEvent
    published: bool = Field(description="False: withheld by a shelve or maintenance period.")
    shelf: Shelf | None = Field(default=None, description="The shelf that covered it when it happened.")


class OpenAlertView(_View):
    """An alert raised and not cleared yet."""

    alert_id: str
    stream: str
    component: str
    failure_mode: str
    severity: str
    since: datetime
    raised_event: str
    last_event: str
    published: bool = Field(description="False while everything about it was withheld by a shelve.")
    shelved_by: Shelf | None = None


class AlertFilters(_View):
    """What ``robotpm-agent alerts`` was asked for."""

    open: bool
    since: datetime | None
    stream: str | None


class JournalSize(_View):
    """How much the journal holds, and its bounds."""

    rows: int
    bytes: int
    max_bytes: int
    max_age_s: float


class AlertsReport(_View):
    """``robotpm-agent alerts --json``: journaled events (or, with --open, the open alerts)."""

    schema_version: Literal["1.0"] = VIEW_SCHEMA_VERSION
    robot_id: str
    site: str
    filters: AlertFilters
    events: tuple[JournalEventView, ...] = Field(description="Oldest first; empty with --open.")
    open_alerts: tuple[OpenAlertView, ...]
    journal: JournalSize


class Thresholds(_View):
    """The alert head's thresholds when the event happened."""

    warning: float
    critical: float
    clear: float


class FeatureView(_View):
    """One feature of the explained window, against the training reference."""

    name: str
    value: float
    z: float = Field(description="(value - training mean) / training std")
    mean: float | None = Field(description="Training mean (None: the journal kept only the top features).")
    std: float | None
    top: bool = Field(description="Among the event's top_features (the ones published).")


class SourceView(_View):
    """Where the window came from, and its raw lines if the file still holds them."""

    file: str
    byte_start: int
    byte_end: int
    present: bool = Field(description="The file exists and the byte range still starts and ends lines.")
    lines: tuple[str, ...] = ()
    truncated: bool = Field(default=False, description="More lines than shown.")
    note: str = ""


class ScorePoint(_View):
    """The score of one window."""

    window: int
    end: float = Field(description="Data time of the window's last sample, epoch seconds.")
    score: float | None


class ExplainReport(_View):
    """``robotpm-agent explain ID --json``: why an alert fired."""

    schema_version: Literal["1.0"] = VIEW_SCHEMA_VERSION
    asked: str = Field(description="The event id or alert id given.")
    alert_id: str
    event_id: str = Field(description="The event explained: the one asked for, or the alert's raise.")
    robot_id: str
    stream: str
    component: str
    failure_mode: str
    meaning: str = ""
    direction: str = "higher_is_worse"
    state: Literal["open", "cleared", "unknown"] = Field(
        description="The alert now: open, cleared, or unknown (its clear fell out of the journal's bounds)."
    )
    severity: str | None
    score: float
    threshold: float = Field(description="The threshold the score was compared with.")
    thresholds: Thresholds | None
    life_cycle: tuple[JournalEventView, ...]
    features: tuple[FeatureView, ...]
    contributors: tuple[dict[str, Any], ...] | None = Field(
        default=None, description="Model-faithful contributions, when the model provides them."
    )
    source: SourceView
    scores: tuple[ScorePoint, ...] = Field(description="Scores of the windows around the alert, in order.")
    sparkline: str
    model: ModelRef
    model_label: str
    shelved_by: Shelf | None = None


class StatusReport(_View):
    """``robotpm-agent status --json``: whether the agent runs and how it is doing."""

    schema_version: Literal["1.0"] = VIEW_SCHEMA_VERSION
    verdict: Verdict
    exit_code: int = Field(description="0 healthy, 1 degraded, 3 not running (2: bad config, no report).")
    reasons: tuple[str, ...] = Field(description="Why degraded or not running; empty when healthy.")
    robot_id: str
    site: str
    state_dir: str
    status_file: str
    status_age_s: float | None = Field(description="Seconds since the agent last refreshed its status file.")
    agent: AgentStatus | None = Field(description="The status file as the agent last wrote it.")
    open_alerts: tuple[OpenAlertView, ...]
    shelves: tuple[Shelf, ...]
    disk: DiskStatus | None


class ShelveReport(_View):
    """``robotpm-agent shelve|unshelve --json``: the request written and the agent's answer."""

    schema_version: Literal["1.0"] = VIEW_SCHEMA_VERSION
    request: ShelveRequest
    result: ShelveResult | None = Field(description="None: the agent did not answer (not running).")
    queued: bool = Field(description="The request waits in the control directory for the agent to start.")
