"""The committed JSON Schema files: current, versioned, and they accept what the agent publishes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from agent.contract.alerts import Heartbeat, ModelRef
from agent.contract.topics import RobotTopics
from agent.publish.telemetry import alert_message, model_status, presence
from agent.schemas import SCHEMA_DIR, SCHEMAS, render, stale, write
from tests.test_policy import make_manifest, make_policy, run

REPO = Path(__file__).resolve().parent.parent


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    return loaded


def validator(name: str) -> Draft202012Validator:
    body = schema(name)
    Draft202012Validator.check_schema(body)
    return Draft202012Validator(body)


def test_committed_schema_files_equal_a_fresh_generation() -> None:
    """Regenerating the schemas from the pydantic models changes nothing."""
    assert [] == stale()
    assert sorted(render()) == sorted(p.name for p in SCHEMA_DIR.glob("*.schema.json"))


def test_the_check_command_passes_on_the_committed_files() -> None:
    """``python -m agent.schemas --check`` exits 0 on the committed files."""
    done = subprocess.run(
        [sys.executable, "-m", "agent.schemas", "--check"], cwd=REPO, capture_output=True, check=False
    )
    assert 0 == done.returncode, done.stderr


def test_an_edited_or_missing_schema_file_is_reported_stale(tmp_path: Path) -> None:
    """stale() names files that differ from a fresh generation or are missing."""
    write(tmp_path)
    (tmp_path / "presence.schema.json").write_text("{}\n")
    (tmp_path / "heartbeat.schema.json").unlink()
    assert ["presence.schema.json", "heartbeat.schema.json"] == stale(tmp_path)


@pytest.mark.parametrize("spec", SCHEMAS, ids=lambda s: s.name)
def test_every_payload_carries_a_schema_version(spec: Any) -> None:
    """Each schema is valid 2020-12, names its topic, and has a schema_version property with one value."""
    body = schema(spec.name)
    Draft202012Validator.check_schema(body)
    version = body["properties"]["schema_version"]
    assert "const" in version or "enum" in version
    assert spec.topic == body["x-robotpm-topic"]


def test_alert_events_from_the_policy_validate() -> None:
    """raised, updated and cleared events as published are valid alert-event documents."""
    check = validator("alert-event")
    for event in run(make_policy(on_delay_windows=1, off_delay_windows=1), [0.7, 0.9, 0.1]):
        check.validate(json.loads(alert_message(RobotTopics("s1", "r1"), event).payload))


def test_a_broken_alert_is_refused_by_the_schema() -> None:
    """Missing event_id or an unknown state fails validation."""
    check = validator("alert-event")
    event = json.loads(run(make_policy(on_delay_windows=1), [0.9])[0].model_dump_json())
    del event["event_id"]
    assert not check.is_valid(event)
    event = json.loads(run(make_policy(on_delay_windows=1), [0.9])[0].model_dump_json())
    event["state"] = "exploded"
    assert not check.is_valid(event)


def test_presence_heartbeat_and_model_status_validate() -> None:
    """The telemetry payloads validate against their schemas."""
    validator("presence").validate(
        json.loads(presence("r1", "s1", "offline", "0.1.0", since=1.7e9, reason="stopped").model_dump_json())
    )
    beat = Heartbeat(
        robot_id="r1",
        site="s1",
        sent_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        uptime_s=1.0,
        lines=1,
        windows=1,
        alerts=0,
        quarantined=0,
        outbox_depth=0,
        outbox_oldest_age_s=None,
        model=ModelRef(id="m", version=1),
        agent_version="0.1.0",
        outbox_dropped={"heartbeat:full": 2},
    )
    validator("heartbeat").validate(json.loads(beat.model_dump_json()))
    validator("model-status").validate(model_status("r1", "s1", make_manifest(), since=1.7e9))
    validator("model-manifest").validate(json.loads(make_manifest().to_json()))


def test_a_heartbeat_from_an_agent_not_yet_upgraded_still_parses_and_validates() -> None:
    """During a fleet rollout subscribers get 1.0 heartbeats (no model_candidate/model_events) too."""
    old = {
        "schema_version": "1.0",
        "robot_id": "r1",
        "site": "s1",
        "sent_at": "2026-01-01T00:00:00Z",
        "uptime_s": 1.0,
        "lines": 1,
        "windows": 1,
        "alerts": 0,
        "quarantined": 0,
        "outbox_depth": 0,
        "outbox_oldest_age_s": None,
        "model": {"id": "m", "version": 1},
        "agent_version": "0.1.0",
    }
    validator("heartbeat").validate(old)
    beat = Heartbeat.model_validate_json(json.dumps(old))
    assert (beat.model_candidate, beat.model_events) == (None, {})
