"""The real agent as a subprocess, watched through its JSON log and its state file (fault tests).

`AgentRun` starts ``robotpm-agent run`` on a config file (through `tests.agent_process`),
reads the events it logged, waits on conditions with a generous deadline, stops it with
SIGTERM or kills it. The module functions read the agent's state read-only.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.agent_process import REPO, spawn_agent


class AgentRun:
    """One agent process (started again with `start` after a stop or kill), its log in `output`."""

    def __init__(self, config: Path, output: Path) -> None:
        self.config = config
        self.output = output
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (the log is appended to, so events of earlier runs stay)."""
        self.process = spawn_agent(self.config, self.output)

    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """Everything it logged so far (all runs)."""
        return self.output.read_text() if self.output.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log lines of event `name`, parsed."""
        return [json.loads(line) for line in self.log().splitlines() if f'"event": "{name}"' in line]

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Poll `condition` until it holds; fail if the agent exits or the deadline passes."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.running(), f"the agent exited before {what}: {self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"not in time: {what}: {self.log()[-3000:]}"
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and its exit code (raises after `timeout`, systemd's TimeoutStopSec)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL it if it still runs (as systemd does at a start or stop timeout)."""
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def status(self) -> str:
        """What ``robotpm-agent status`` prints (stdout and stderr)."""
        result = agent_cli("status", self.config)
        return result.stdout + result.stderr


def agent_cli(command: str, config: Path, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``robotpm-agent COMMAND --config CONFIG`` as a technician runs it, bounded in time (a hang fails)."""
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", command, "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )


def query(state_dir: Path, sql: str) -> list[Any]:
    """Rows of a read-only query on the agent's state; [] while there is none (or it is damaged)."""
    path = state_dir / "agent.db"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.DatabaseError:  # not created yet, or a damaged one not moved aside yet
        return []
    finally:
        db.close()


def outbox_alerts(state_dir: Path) -> list[dict[str, Any]]:
    """The alert events waiting in the outbox, in order."""
    rows = query(state_dir, "SELECT payload FROM outbox WHERE kind = 'alert' ORDER BY id")
    return [json.loads(r[0]) for r in rows]


def saved_samples(state_dir: Path, stream: str = "arm1") -> int:
    """Samples the stream's last committed state has seen (0 before its first commit)."""
    rows = query(state_dir, f"SELECT state FROM stream_state WHERE stream = '{stream}'")
    return int(json.loads(rows[0][0])["pipeline"]["samples_seen"]) if rows else 0
