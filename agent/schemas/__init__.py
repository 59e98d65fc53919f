"""JSON Schema files of every payload the agent publishes, and of its local files and ``--json`` outputs.

Generated from the pydantic models: the MQTT payloads, the status file and shelve
requests of the control directory, and what each technician command prints with
``--json`` (``robotpm-agent alerts|explain|status|shelve``).

The files in this directory are committed so subscribers can validate payloads
without Python; ``python -m agent.schemas`` regenerates them and
``python -m agent.schemas --check`` fails when they are stale (a test runs it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from agent.contract.alerts import AlertEvent, DriftReport, Heartbeat, OpenAlerts, Presence
from agent.contract.announcement import ModelAnnouncement
from agent.contract.manifest import ModelManifest
from agent.publish.telemetry import ModelStatus
from agent.technician.shelving import ShelveRequest, ShelveResult
from agent.technician.statusfile import AgentStatus
from agent.technician.views import AlertsReport, ExplainReport, ShelveReport, StatusReport

SCHEMA_DIR: Final = Path(__file__).resolve().parent
DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class SchemaSpec:
    """One schema file: its name, its model and where the payload travels."""

    name: str
    model: type[BaseModel]
    topic: str
    description: str


SCHEMAS: Final = (
    SchemaSpec(
        "alert-event",
        AlertEvent,
        "robotpm/v1/<site>/<robot>/alerts",
        "One event of an alert's life cycle (raised, updated, cleared). QoS 1, not retained; "
        "delivered at least once: de-duplicate by event_id.",
    ),
    SchemaSpec(
        "open-alerts",
        OpenAlerts,
        "robotpm/v1/<site>/<robot>/open_alerts",
        "Retained, QoS 1: every open alert of the robot, replaced on every raise, update, clear and shelve. "
        "A subscriber that (re)starts reads what is open here; an empty list means nothing is.",
    ),
    SchemaSpec(
        "drift-report",
        DriftReport,
        "robotpm/v1/<site>/<robot>/drift",
        "QoS 1, not retained: one stream's feature drift against the model's training data (PSI against "
        "the training quantile bins and the mean shift in training stds), sent when its state changes.",
    ),
    SchemaSpec(
        "presence",
        Presence,
        "robotpm/v1/<site>/<robot>/status",
        "Retained presence. 'online' on every connect; 'offline' as the last will and before a clean stop.",
    ),
    SchemaSpec(
        "heartbeat",
        Heartbeat,
        "robotpm/v1/<site>/<robot>/heartbeat",
        "Periodic counters of the agent. QoS 1, retained (the latest).",
    ),
    SchemaSpec(
        "model-status",
        ModelStatus,
        "robotpm/v1/<site>/<robot>/model",
        "Retained: the model the robot runs, and since when.",
    ),
    SchemaSpec(
        "model-announcement",
        ModelAnnouncement,
        "robotpm/v1/models/<channel>",
        "Retained, QoS 1, published by the trainer: a model version and the URL, sha256 and length of "
        "its bundle (an uncompressed tar of model.onnx, manifest.json and manifest.sig).",
    ),
    SchemaSpec(
        "model-manifest",
        ModelManifest,
        "manifest.json beside model.onnx (not an MQTT payload)",
        "The contract of one model version, written by the trainer and read by the agent.",
    ),
    SchemaSpec(
        "agent-status",
        AgentStatus,
        "<control dir>/status.json (a local file, not an MQTT payload)",
        "The running agent's own account, rewritten atomically each heartbeat (at least every 10 s) and "
        "once more with state 'stopped' at a clean stop; robotpm-agent status reads it.",
    ),
    SchemaSpec(
        "shelve-request",
        ShelveRequest,
        "<control dir>/requests/<id>.json (a local file, written by robotpm-agent shelve|unshelve)",
        "A shelve or unshelve request; only root and members of the control directory's group can write one.",
    ),
    SchemaSpec(
        "shelve-result",
        ShelveResult,
        "<control dir>/results/<id>.json (a local file, the agent's answer to one request)",
        "Whether the agent applied a shelve or unshelve request, and the shelves it added or ended.",
    ),
    SchemaSpec(
        "cli-alerts",
        AlertsReport,
        "stdout of robotpm-agent alerts --json",
        "Alert events kept in the robot's journal (or, with --open, the alerts open now).",
    ),
    SchemaSpec(
        "cli-explain",
        ExplainReport,
        "stdout of robotpm-agent explain ID --json",
        "Why an alert fired: life cycle, score and thresholds, features with z-scores, raw lines, scores.",
    ),
    SchemaSpec(
        "cli-status",
        StatusReport,
        "stdout of robotpm-agent status --json",
        "Whether the agent runs and how it is doing; exit_code is the command's exit status.",
    ),
    SchemaSpec(
        "cli-shelve",
        ShelveReport,
        "stdout of robotpm-agent shelve|unshelve --json",
        "The request written and the agent's answer (null when it did not answer: not running).",
    ),
)


def schema_of(spec: SchemaSpec) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one payload, as published on the wire."""
    body = spec.model.model_json_schema(mode="serialization")
    version = spec.model.model_fields["schema_version"].default
    return {
        "$schema": DIALECT,
        "$id": f"urn:robotpm:schema:{spec.name}:{version}",
        "x-robotpm-topic": spec.topic,
        **{k: v for k, v in body.items() if k != "description"},
        "description": spec.description,
    }


def render() -> dict[str, str]:
    """File name → text of every schema file."""
    return {
        f"{spec.name}.schema.json": json.dumps(schema_of(spec), indent=2, ensure_ascii=False) + "\n"
        for spec in SCHEMAS
    }


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file into `directory`; returns the paths written."""
    written = []
    for name, text in render().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing or differ from a fresh generation."""
    out = []
    for name, text in render().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    return out
