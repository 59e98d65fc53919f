"""``robotpm-alerts``: subscribe to a robot, a site or the fleet; de-duplicate, print, store, presence."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config import MqttConfig
from agent.contract.alerts import AlertEvent
from agent.contract.topics import RobotTopics
from agent.publish.telemetry import presence
from agent.subscriber.cli import Printer, Store, Watcher, main, open_store
from tests.mosquitto import Broker
from tests.test_policy import make_policy, run

REPO = Path(__file__).resolve().parent.parent


def events(robot: str = "r1", site: str = "s1", n_windows: int = 6) -> list[AlertEvent]:
    """A real raised → updated → cleared episode from the policy, re-labelled for a robot."""
    policy = make_policy(on_delay_windows=1, off_delay_windows=1)
    out = run(policy, [0.7, 0.9, 0.1][:n_windows])
    return [
        e.model_copy(update={"robot_id": robot, "site": site, "event_id": f"{robot}-{e.event_id}"})
        for e in out
    ]


class Publisher:
    """A plain paho publisher, as the agent would be."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def alert(self, event: AlertEvent) -> None:
        self.send(RobotTopics(event.site, event.robot_id).alerts, event.model_dump_json().encode())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(name="publisher")
def _publisher(broker: Broker) -> Iterator[Publisher]:
    pub = Publisher(broker.port)
    yield pub
    pub.close()


class Tool:
    """``robotpm-alerts`` as a subprocess, its stdout lines read in a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent.subscriber.cli", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, needle: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in self.lines):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise TimeoutError(f"no line with {needle!r}: {self.lines}")
            time.sleep(0.02)

    def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        assert self.process.stderr is not None
        err = self.process.stderr.read()
        for stream in (self.process.stdout, self.process.stderr):
            assert stream is not None
            stream.close()
        return code, err


def announce(publisher: Publisher, robot: str = "r1", site: str = "s1") -> None:
    record = presence(robot, site, "online", "0.1.0", since=1_700_000_000.0)
    publisher.send(RobotTopics(site, robot).status, record.model_dump_json().encode(), retain=True)


class TestSubscriber:
    def test_json_lines_show_presence_and_each_event_once(self, broker: Broker, publisher: Publisher) -> None:
        """Duplicates (same event_id) are dropped; presence is shown; invalid payloads are counted."""
        announce(publisher)
        tool = Tool("--port", str(broker.port), "--json", "--count", "3", "--timeout", "20")
        tool.wait_for_line('"kind":"presence"')
        episode = events()
        for event in [episode[0], episode[0], episode[1], episode[0], episode[2]]:
            publisher.alert(event)
        publisher.send(RobotTopics("s1", "r1").alerts, b'{"not": "an alert"}')
        code, err = tool.finish()
        records = [json.loads(line) for line in tool.lines]
        assert 0 == code
        assert "online" == records[0]["presence"]["state"]
        assert [e.event_id for e in episode] == [
            r["event"]["event_id"] for r in records if r["kind"] == "alert"
        ]
        assert "2 duplicates dropped" in err

    def test_scope_is_a_robot_a_site_or_the_fleet(self, broker: Broker, publisher: Publisher) -> None:
        """--robot shows one robot, --site one site, neither the whole fleet."""
        announce(publisher, "r1", "s1")
        tools = {
            "robot": Tool("--port", str(broker.port), "--json", "--robot", "r1", "--timeout", "4"),
            "site": Tool("--port", str(broker.port), "--json", "--site", "s2", "--timeout", "4"),
            "fleet": Tool("--port", str(broker.port), "--json", "--timeout", "4"),
        }
        for name in ("robot", "fleet"):
            tools[name].wait_for_line('"kind":"presence"')
        time.sleep(0.5)  # the site tool has no retained presence to wait for
        publisher.alert(events("r1", "s1")[0])
        publisher.alert(events("r2", "s2")[0])
        publisher.alert(events("r3", "s2")[0])
        seen = {}
        for name, tool in tools.items():
            assert 0 == tool.finish()[0]
            seen[name] = sorted(
                json.loads(line)["event"]["robot_id"] for line in tool.lines if '"kind":"alert"' in line
            )
        assert {"robot": ["r1"], "site": ["r2", "r3"], "fleet": ["r1", "r2", "r3"]} == seen

    def test_broker_settings_can_come_from_the_agent_config(
        self, broker: Broker, publisher: Publisher, tmp_path: Path
    ) -> None:
        """--config reads agent.mqtt (host, port, TLS, credentials) from config.toml."""
        config = tmp_path / "config.toml"
        config.write_text(
            f"""
[agent]
robot_id = "r1"
state_dir = "state"
[agent.model]
directory = "models"
[agent.mqtt]
port = {broker.port}
[[agent.streams]]
name = "arm1"
directory = "logs"
[agent.streams.channels]
J1 = "j1_current"
"""
        )
        announce(publisher)
        out = io.StringIO()
        assert 0 == main(["--config", str(config), "--json", "--timeout", "1.5"], out=out)
        assert '"kind":"presence"' in out.getvalue()

    def test_bad_arguments_exit_2(self, tmp_path: Path) -> None:
        """A config file that does not exist, or --count 0, is exit code 2."""
        assert 2 == main(["--config", str(tmp_path / "nope.toml")], out=io.StringIO())
        assert 2 == main(["--count", "0"], out=io.StringIO())

    def test_timeout_before_count_exits_1(self, broker: Broker) -> None:
        """--count not reached within --timeout is exit code 1."""
        assert 1 == main(["--port", str(broker.port), "--count", "1", "--timeout", "1"], out=io.StringIO())

    def test_a_persistent_client_id_receives_what_was_published_while_it_was_away(
        self, broker: Broker, publisher: Publisher
    ) -> None:
        """With --client-id, alerts sent between two runs are delivered on the second run."""
        args = ["--port", str(broker.port), "--json", "--client-id", "mes-1", "--no-presence"]
        assert 1 == main([*args, "--count", "1", "--timeout", "1"], out=io.StringIO())
        episode = events()
        for event in episode:
            publisher.alert(event)
        out = io.StringIO()
        assert 0 == main([*args, "--count", "3", "--timeout", "10"], out=out)
        assert [e.event_id for e in episode] == [
            json.loads(x)["event"]["event_id"] for x in out.getvalue().splitlines()
        ]

    def test_table_output_names_robot_component_state_and_top_feature(
        self, broker: Broker, publisher: Publisher
    ) -> None:
        """The human table has a header and one readable row per event."""
        announce(publisher)
        tool = Tool("--port", str(broker.port), "--count", "1", "--timeout", "20")
        tool.wait_for_line("is ONLINE")
        publisher.alert(events()[0])
        assert 0 == tool.finish()[0]
        header, row = tool.lines[1], tool.lines[2]
        assert "# 1 open alert(s):" == tool.lines[3]
        assert "joint1/bearing_wear  warning" in tool.lines[4]
        assert "component/failure mode" in header
        for part in ("s1/r1", "joint1/bearing_wear", "raised", "warning"):
            assert part in row
        assert "z " in row


def json_watcher(out: io.StringIO, *, presence: bool, store: Store | None) -> Watcher:
    """A watcher of every site and robot, printing JSON lines to `out`, without heartbeats."""
    return Watcher(
        MqttConfig(),
        site=None,
        robot=None,
        client_id=None,
        presence=presence,
        heartbeats=False,
        printer=Printer(out, as_json=True),
        store=store,
    )


class TestStores:
    def _watcher(self, store_path: Path) -> tuple[Watcher, io.StringIO]:
        out = io.StringIO()
        return json_watcher(out, presence=True, store=open_store(store_path)), out

    def test_sqlite_store_keeps_each_event_once_across_runs(self, tmp_path: Path) -> None:
        """Storing the same events in two runs leaves one row per event_id."""
        db = tmp_path / "alerts.db"
        episode = events()
        for _ in range(2):
            watcher, _ = self._watcher(db)
            for event in episode + episode:
                watcher.handle(RobotTopics("s1", "r1").alerts, event.model_dump_json().encode(), False)
            watcher._store.close()  # type: ignore[union-attr]
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT event_id, state, severity FROM alerts ORDER BY rowid").fetchall()
        assert [(e.event_id, e.state, e.severity or "") for e in episode] == rows

    def test_csv_store_has_a_header_and_one_row_per_distinct_event(self, tmp_path: Path) -> None:
        """CSV rows carry ids, state, score and the top features."""
        path = tmp_path / "alerts.csv"
        watcher, _ = self._watcher(path)
        episode = events()
        for event in episode + episode:
            watcher.handle(RobotTopics("s1", "r1").alerts, event.model_dump_json().encode(), False)
        watcher._store.close()  # type: ignore[union-attr]
        assert {} == watcher.open_alerts, "a cleared alert is no longer open"
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert ["raised", "updated", "cleared"] == [r["state"] for r in rows]
        assert all(r["top_features"] for r in rows)


def test_console_script_is_declared() -> None:
    """Pyproject declares robotpm-alerts = agent.subscriber.cli:main."""
    text = (REPO / "pyproject.toml").read_text()
    assert 'robotpm-alerts = "agent.subscriber.cli:main"' in text
