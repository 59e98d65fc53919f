"""The technician's commands, golden: alerts, explain, status, shelve and unshelve, as text and as JSON.

One small robot is run tick by tick (in-memory broker, manual clock, real SQLite and
log files): a fault raises and clears an alert, the stream is shelved, a second
fault raises an alert that is journaled but withheld. Each command's output is
compared with a committed file under tests/golden/technician/ (``--json`` output is
also validated against its schema in agent/schemas). Only what cannot be the same
from run to run is masked: the temporary directory, the pid, disk space and ages
measured on the real clock. ``ROBOTPM_UPDATE_GOLDEN=1`` rewrites the files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from jsonschema import Draft202012Validator

from agent.cli import main
from agent.config import AgentConfig, load_agent_config
from agent.daemon import AgentDaemon
from agent.logs import configure_logging
from agent.schemas import SCHEMA_DIR
from agent.testing import InMemoryTransport, ManualClock
from tests.agent_config import agent_config
from tests.models import write_linear_model

GOLDEN = Path(__file__).resolve().parent / "golden" / "technician"
UPDATE = os.environ.get("ROBOTPM_UPDATE_GOLDEN") == "1"
HEADER = "ts,J1,T1\n"
FAULT = [0.1] * 12 + [1.0] * 12 + [0.1] * 16
"""Healthy, a fault (current 1.0: score 1.0 over critical 0.8), healthy again: one raise, one clear."""


def csv_lines(start: int, currents: list[float]) -> str:
    return "".join(f"{start + i}.0,{c},40.0\n" for i, c in enumerate(currents))


class Robot:
    """A daemon driven tick by tick, with the config file the CLI reads."""

    def __init__(self, root: Path, *, control_group: str | None = None) -> None:
        self.root = root
        (root / "logs").mkdir()
        write_linear_model(root / "bundled")
        self.config_path = root / "config.toml"
        self.config_path.write_text(
            agent_config(
                port=1883,
                robot_id="r1",
                site="lab",
                heartbeat_interval_s=3600,
                model={"check_interval_s": 0.01, "probation_windows": 0},
                ingest={"watch": "poll", "poll_interval_s": 0.01},
                policy={"on_delay_windows": 2, "off_delay_windows": 2},
            )
            + (f'[agent.control]\ngroup = "{control_group}"\n' if control_group else "")
        )
        self.config: AgentConfig = load_agent_config(self.config_path)
        # The daemon's log lines go to a file of their own, not into the commands' captured stdout.
        self.log_path = root / "agent.log"
        self._log_file = self.log_path.open("a")
        configure_logging("info", "json")
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=self._log_file))
        self.transport = InMemoryTransport()
        self.clock = ManualClock()
        self.daemon = AgentDaemon(self.config, transport=self.transport, clock=self.clock)
        self.daemon.startup()
        self._lock = threading.Lock()
        self.settle(1)  # the first tick writes the status file: the agent runs

    def log(self, text: str) -> None:
        path = self.root / "logs" / "arm1.csv"
        new = not path.exists()
        with path.open("a") as handle:
            handle.write((HEADER if new else "") + text)

    def settle(self, ticks: int = 30) -> None:
        with self._lock:
            for _ in range(ticks):
                self.daemon.tick(0.0)
                self.clock.advance(0.05)

    def request(self, *args: str) -> tuple[int, str, str]:
        """Run shelve/unshelve while the daemon ticks: always as many ticks, so the clock agrees."""
        answer: list[tuple[int, str, str]] = []
        thread = threading.Thread(target=lambda: answer.append(self.cli(*args)), name="cli")
        requests = self.root / "state" / "control" / "requests"
        thread.start()
        deadline = time.monotonic() + 30
        while not list(requests.glob("[!.]*.json")) and thread.is_alive():
            assert time.monotonic() < deadline, "the CLI wrote no request"
            time.sleep(0.01)
        self.settle(40)  # 2 s of agent time: the requests are polled every second
        thread.join(30)
        assert answer, "the CLI did not finish"
        return answer[0]

    def cli(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*args, "--config", str(self.config_path)])
        return code, out.getvalue(), err.getvalue()

    def close(self) -> None:
        """Stop the daemon (once) and give logging back."""
        if self._log_file.closed:
            return
        self.daemon.shutdown()
        structlog.reset_defaults()
        self._log_file.close()

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def published_alerts(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.transport.messages("alert")]


@pytest.fixture(name="robot")
def _robot() -> Iterator[Robot]:
    # A root of one fixed length: the journal's byte count holds the log's path (pytest's
    # tmp_path grows with its run number, which made the golden byte count change by itself).
    root = Path(tempfile.mkdtemp(prefix="robotpm-golden-", dir="/tmp"))
    robot = Robot(root)
    try:
        yield robot
    finally:
        robot.close()
        shutil.rmtree(root, ignore_errors=True)


def mask(text: str, robot: Robot) -> str:
    """The output with what differs between runs replaced by placeholders."""
    text = text.replace(str(robot.root), "<tmp>")
    text = re.sub(r'("pid": )\d+', r"\1<pid>", text)
    text = re.sub(r"pid \d+", "pid <pid>", text)
    text = re.sub(r'("(?:free|total)_bytes": )\d+', r"\1<n>", text)
    text = re.sub(r'("status_age_s": )[0-9.]+', r"\1<age>", text)
    text = re.sub(r"status written \d+ s ago", "status written <age> ago", text)
    text = re.sub(r"[0-9.]+ [KMG]?i?B free of [0-9.]+ [KMG]?i?B", "<free> free of <total>", text)
    text = re.sub(r'("requested_at": )"[^"]+"', r'\1"<now>"', text)
    return re.sub(r"\b[0-9a-f]{16}-[0-9a-f]{8}\b", "<request>", text)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{name} differs from the golden file (ROBOTPM_UPDATE_GOLDEN=1 rewrites)"


def check_schema(schema: str, text: str) -> dict[str, Any]:
    body = json.loads((SCHEMA_DIR / f"{schema}.schema.json").read_text())
    Draft202012Validator.check_schema(body)
    document: dict[str, Any] = json.loads(text)
    errors = [e.message for e in Draft202012Validator(body).iter_errors(document)]
    assert [] == errors
    return document


def fault_then_shelved_fault(robot: Robot) -> tuple[str, str]:
    """Raise and clear one alert, shelve the stream, raise a second one; their alert ids."""
    robot.log(csv_lines(0, FAULT))
    robot.settle()
    first = robot.published_alerts()[0]["alert_id"]
    code, out, err = robot.request("shelve", "--stream", "arm1", "--for", "2h", "--reason", "gearbox swap")
    assert 0 == code, out + err
    robot.log(csv_lines(len(FAULT), [1.0] * 6))
    robot.settle()
    code, out, _ = robot.cli("alerts", "--open", "--json")
    (second,) = [a["alert_id"] for a in json.loads(out)["open_alerts"]]
    return first, second


COMMANDS = {
    "alerts": ("cli-alerts", ("alerts",)),
    "alerts-open": ("cli-alerts", ("alerts", "--open")),
    "alerts-stream": ("cli-alerts", ("alerts", "--stream", "arm1", "--since", "2023-11-14T22:00")),
    "explain-alert": ("cli-explain", ("explain", "<first12>")),
    "explain-shelved": ("cli-explain", ("explain", "<second>")),
    "status": ("cli-status", ("status",)),
}


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_prints_what_the_golden_file_shows(robot: Robot, name: str, as_json: bool) -> None:
    """Every read command, as text and as JSON (valid against its schema), equals its golden file."""
    first, second = fault_then_shelved_fault(robot)
    schema, args = COMMANDS[name]
    argv = [a.replace("<first12>", first[:12]).replace("<second>", second) for a in args]
    code, out, err = robot.cli(*argv, *(["--json"] if as_json else []))
    assert "" == err
    assert 0 == code
    if as_json:
        check_schema(schema, out)
    check_golden(f"{name}.{'json' if as_json else 'txt'}", mask(out, robot))


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_shelve_and_unshelve_print_what_the_golden_files_show(robot: Robot, as_json: bool) -> None:
    """Shelve and unshelve answer with the agent's result, as text and as JSON (valid against its schema)."""
    robot.log(csv_lines(0, FAULT))
    robot.settle()
    flag = ["--json"] if as_json else []
    shelved = robot.request(
        "shelve", "--all", "--for", "30m", "--reason", "calibration", "--maintenance", *flag
    )
    unshelved = robot.request("unshelve", "--all", *flag)
    for (code, out, err), name in ((shelved, "shelve"), (unshelved, "unshelve")):
        assert (0, "") == (code, err)
        if as_json:
            check_schema("cli-shelve", out)
        check_golden(f"{name}.{'json' if as_json else 'txt'}", mask(out, robot))
