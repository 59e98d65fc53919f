"""The retained open-alerts state: built from the policies, valid by its schema, read by robotpm-alerts."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from agent.config import OutboxConfig
from agent.contract.alerts import OpenAlerts
from agent.contract.topics import RobotTopics, parse_robot_topic
from agent.outbox import Outbox
from agent.publish.telemetry import open_alerts_message, open_alerts_state
from agent.schemas import SCHEMA_DIR
from agent.state import StateStore
from agent.subscriber.cli import main
from agent.testing import ManualClock
from tests.mosquitto import Broker
from tests.test_alerts_cli import Publisher, Tool, events, json_watcher
from tests.test_policy import make_manifest, make_policy, run

NOW = 1_780_000_000.0
TOPICS = RobotTopics("s1", "r1")


@pytest.fixture(name="publisher")
def _publisher(broker: Broker) -> Iterator[Publisher]:
    pub = Publisher(broker.port)
    yield pub
    pub.close()


def two_open_alerts() -> OpenAlerts:
    """Stream arm1 with a critical alert open, stream arm2 with a warning open, one alert shelved."""
    heads = (("joint1", "wear", "higher_is_worse"), ("joint2", "heat", "higher_is_worse"))
    arm1 = make_policy(make_manifest(heads=heads), on_delay_windows=1)
    run(arm1, [0.9])
    arm2 = make_policy(on_delay_windows=1)
    run(arm2, [0.7])
    arm2._stream = "arm2"  # the policy names its stream; make_policy always says arm1
    shelved_id = arm1.open_alert_records()[1].alert_id
    until = datetime(2026, 12, 2, tzinfo=timezone.utc)
    return open_alerts_state(
        "r1", "s1", [arm1, arm2], now=NOW, shelved={shelved_id: (until, "bearing ordered")}
    )


class TestTheState:
    def test_open_alerts_of_every_stream_are_listed_with_severity_and_shelving(self) -> None:
        """The state names each open alert's stream, head, severity and model; the worst severity leads."""
        state = two_open_alerts()
        assert (3, "critical") == (state.count, state.worst_severity)
        rows = [(a.stream, a.component, a.severity, a.shelved) for a in state.alerts]
        assert [
            ("arm1", "joint1", "critical", False),
            ("arm1", "joint2", "critical", True),
            ("arm2", "joint1", "warning", False),
        ] == rows
        assert "bearing ordered" == state.alerts[1].shelve_reason

    def test_a_cleared_alert_leaves_the_state_and_nothing_open_is_an_empty_list(self) -> None:
        """After raise then clear the state holds no alert: count 0, no severity."""
        policy = make_policy(on_delay_windows=1, off_delay_windows=1)
        run(policy, [0.7, 0.1])
        state = open_alerts_state("r1", "s1", [policy], now=NOW)
        assert (0, None, ()) == (state.count, state.worst_severity, state.alerts)

    def test_alerts_of_heads_a_new_model_dropped_stay_listed_until_cleared(self) -> None:
        """After a swap to a model without the head, its open alert is still open (until the next window)."""
        policy = make_policy(on_delay_windows=1)
        run(policy, [0.9])
        policy.use_model(make_manifest(version=2, heads=(("joint9", "other", "higher_is_worse"),)))
        [alert] = open_alerts_state("r1", "s1", [policy], now=NOW).alerts
        assert ("joint1", 1) == (alert.component, alert.model.version)

    def test_the_message_is_retained_replaces_its_queued_predecessor_and_validates(
        self, tmp_path: Path
    ) -> None:
        """QoS 1, retained, on …/open_alerts; a newer state replaces the older one in the outbox."""
        message = open_alerts_message(TOPICS, two_open_alerts())
        assert ("robotpm/v1/s1/r1/open_alerts", 1, True) == (message.topic, message.qos, message.retain)
        assert ("s1", "r1", "open_alerts") == parse_robot_topic(message.topic)
        schema = json.loads((SCHEMA_DIR / "open-alerts.schema.json").read_text())
        Draft202012Validator(schema).validate(json.loads(message.payload))
        outbox = Outbox(StateStore(tmp_path / "agent.db"), OutboxConfig(), ManualClock())
        outbox.enqueue_now([message])
        empty = open_alerts_state("r1", "s1", [], now=NOW + 1)
        outbox.enqueue_now([open_alerts_message(TOPICS, empty)])
        [row] = outbox.pending(0, 10)
        assert 0 == json.loads(row.message.payload)["count"]


class TestSubscriberStartsFromIt:
    def test_a_restarted_tool_knows_the_open_alerts_from_the_retained_state(
        self, broker: Broker, publisher: Publisher
    ) -> None:
        """Without any alert event, the table ends with the open alerts the retained state listed."""
        publisher.send(TOPICS.open_alerts, two_open_alerts().model_dump_json().encode(), retain=True)
        out = io.StringIO()
        assert 0 == main(["--port", str(broker.port), "--timeout", "1.5"], out=out)
        lines = out.getvalue().splitlines()
        assert "# robot s1/r1 has 3 open alert(s)" in lines
        assert "# 3 open alert(s):" in lines
        assert any("joint2/heat  critical [shelved]" in line for line in lines)

    def test_json_mode_shows_the_retained_state_then_events_update_what_is_open(
        self, broker: Broker, publisher: Publisher
    ) -> None:
        """The retained state arrives first (retained=true); the alert's clear event follows."""
        still_open = make_policy(on_delay_windows=1, off_delay_windows=1)
        run(still_open, [0.7])
        state = open_alerts_state("r1", "s1", [still_open], now=NOW)
        publisher.send(TOPICS.open_alerts, state.model_dump_json().encode(), retain=True)
        _, cleared = run(make_policy(on_delay_windows=1, off_delay_windows=1), [0.7, 0.1])
        tool = Tool("--port", str(broker.port), "--json", "--no-presence", "--count", "1", "--timeout", "20")
        tool.wait_for_line('"kind":"open_alerts"')
        publisher.alert(cleared)
        code, _ = tool.finish()
        records = [json.loads(line) for line in tool.lines]
        assert 0 == code
        assert ("open_alerts", True, 1) == (
            records[0]["kind"],
            records[0]["retained"],
            records[0]["open_alerts"]["count"],
        )
        assert state.alerts[0].alert_id == cleared.alert_id
        assert ("alert", "cleared") == (records[1]["kind"], records[1]["event"]["state"])

    def test_a_robots_state_replaces_what_was_known_of_it_and_events_keep_it_current(self) -> None:
        """Events open and close alerts; a robot's state message replaces that robot's alerts only."""
        watcher = json_watcher(io.StringIO(), presence=False, store=None)
        raised_r1 = events("r1", "s1")[0]
        watcher.handle(TOPICS.alerts, raised_r1.model_dump_json().encode(), False)
        assert {raised_r1.alert_id} == set(watcher.open_alerts)
        empty_r1 = open_alerts_state("r1", "s1", [], now=NOW)
        watcher.handle(TOPICS.open_alerts, empty_r1.model_dump_json().encode(), False)
        assert {} == watcher.open_alerts
        still_open = make_policy(on_delay_windows=1, off_delay_windows=1)
        run(still_open, [0.7])
        r2 = RobotTopics("s2", "r2")
        state_r2 = open_alerts_state("r2", "s2", [still_open], now=NOW)
        watcher.handle(r2.open_alerts, state_r2.model_dump_json().encode(), True)
        watcher.handle(TOPICS.open_alerts, empty_r1.model_dump_json().encode(), False)
        assert [("s2", "r2")] == [(site, robot) for site, robot, _ in watcher.open_alerts.values()]
        _, cleared = run(make_policy(on_delay_windows=1, off_delay_windows=1), [0.7, 0.1])
        watcher.handle(
            r2.alerts,
            cleared.model_copy(update={"robot_id": "r2", "site": "s2"}).model_dump_json().encode(),
            False,
        )
        assert {} == watcher.open_alerts


class TestDocumentation:
    def test_the_documented_example_and_home_assistant_config_match_the_interface(self) -> None:
        """docs/mqtt-interface.md: the example validates; the discovery config reads the real topics."""
        text = (Path(__file__).resolve().parent.parent / "docs" / "mqtt-interface.md").read_text()
        section = text[text.index("### Open alerts (retained)") : text.index("### Drift reports")]
        example, discovery = (json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, re.S))
        schema = json.loads((SCHEMA_DIR / "open-alerts.schema.json").read_text())
        Draft202012Validator(schema).validate(example)
        assert example["count"] == len(OpenAlerts.model_validate(example).alerts)
        assert TOPICS.open_alerts == discovery["state_topic"] == discovery["json_attributes_topic"]
        assert TOPICS.status == discovery["availability_topic"]
