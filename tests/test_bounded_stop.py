"""A bounded stop: SIGTERM ends the real agent well within the unit's TimeoutStopSec, with its final commit.

Whatever the outside does: the loop asleep in a long poll, a model server that trickles one
byte every 0.2 s, a model load that never returns on the model watcher's thread. The final
commit is checked in the state file: the lines read before SIGTERM are committed (the
checkpoint interval is a minute, so only the stop's own commit can have saved them).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.contract.topics import model_announcements
from tests import model_server
from tests.agent_config import agent_config
from tests.agent_runs import AgentRun, saved_samples
from tests.model_server import https_fixture, keys_fixture, pki_fixture, webroot_fixture  # noqa: F401
from tests.models import write_linear_model
from tests.mosquitto import Broker
from tests.signing_keys import FleetKeys
from tests.test_crash_loop import write_spinning_model
from tests.test_model_fetch import CHANNEL, published, resigned, signed_version

HEADER = "ts,J1,T1\n"
LINES = 30
TIMEOUT_STOP_S = 30.0
"""The unit's TimeoutStopSec (systemd/robotpm-agent.service)."""


class Agent(AgentRun):
    """The real agent in `root` with a one-minute checkpoint interval (only the stop commits in between)."""

    def __init__(
        self, root: Path, *, port: int = 1, model: dict[str, Any] | None = None, **ingest: Any
    ) -> None:
        super().__init__(root / "config.toml", root / "agent.out")
        self.root = root
        (root / "logs").mkdir(parents=True, exist_ok=True)
        write_linear_model(root / "bundled", version=1)
        self.config.write_text(
            agent_config(
                port=port,
                robot_id="r1",
                model=model or {},
                ingest={"watch": "poll", "poll_interval_s": 0.05, "checkpoint_interval_s": 60.0, **ingest},
            )
        )

    def write_lines(self) -> None:
        (self.root / "logs" / "arm1.csv").write_text(
            HEADER + "".join(f"{i}.0,0.1,40.0\n" for i in range(LINES))
        )

    @contextmanager
    def running(self) -> Iterator[Agent]:
        """The agent started on its lines; SIGKILLed on the way out (a no-op once it has stopped)."""
        self.write_lines()
        self.start()
        try:
            yield self
        finally:
            self.kill()

    def sigterm(self) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds to exit). Killed after TimeoutStopSec, as systemd would."""
        started = time.monotonic()
        try:
            code = self.stop(timeout=TIMEOUT_STOP_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return -signal.SIGKILL, time.monotonic() - started
        return code, time.monotonic() - started

    def committed_samples(self) -> int:
        return saved_samples(self.root / "state")


def test_sigterm_ends_a_long_poll_at_once_with_the_final_commit(tmp_path: Path) -> None:
    """poll_interval_s = 30: the loop sleeps; SIGTERM wakes it, it commits and exits in a few seconds."""
    agent = Agent(tmp_path, poll_interval_s=30.0)
    with agent.running():
        agent.wait(lambda: bool(agent.events("agent_started")), "the start")
        time.sleep(1.0)  # the first tick read the lines; the next one is 30 s away
        code, seconds = agent.sigterm()
    assert 0 == code
    assert seconds < 10.0, f"{seconds:.1f} s to stop"
    assert LINES == agent.committed_samples()
    assert agent.events("agent_stopped")


def test_sigterm_during_a_trickling_model_download_ends_in_time_with_the_final_commit(
    tmp_path: Path,
    broker: Broker,
    https: model_server.ModelServer,
    webroot: Path,
    pki: model_server.Pki,
    keys: FleetKeys,
) -> None:
    """The announced bundle comes one byte every 0.2 s; SIGTERM mid-download still stops in seconds."""
    payload = published(signed_version(tmp_path, keys), https, webroot, keys)
    trickling = resigned(payload, keys, url=f"{https.base_url}/trickle/test-linear-v2.tar")
    model_server.mqtt_publish(broker.port, model_announcements(CHANNEL), trickling)
    agent = Agent(
        tmp_path / "agent",
        port=broker.port,
        model={"channel": CHANNEL, "download_ca_file": pki.ca, "trusted_keys": keys.trusted},
    )
    with agent.running():
        agent.wait(lambda: https.requests["/trickle/test-linear-v2.tar"] >= 1, "the download under way")
        code, seconds = agent.sigterm()
    assert 0 == code
    assert seconds < 15.0, f"{seconds:.1f} s to stop"
    assert LINES == agent.committed_samples()


def test_sigterm_while_a_model_load_hangs_in_the_watcher_exits_0_in_time_with_the_final_commit(
    tmp_path: Path,
) -> None:
    """A newer store model whose load never returns (no probe child): the watcher's thread is stuck in
    onnxruntime. The stop does not wait for it past its budget, commits, and exits 0 (not an abort).
    """
    agent = Agent(tmp_path, model={"isolate": False})
    with agent.running():
        agent.wait(lambda: bool(agent.events("agent_started")), "the start")
        staging = tmp_path / "staging-v2"
        write_spinning_model(staging, version=2)
        staging.rename(tmp_path / "store" / "v2")
        deadline = time.monotonic() + 5.0  # the watcher looks within check_interval_s (1 s)
        while b"v2" not in _inflight(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        code, seconds = agent.sigterm()
    assert 0 == code, agent.output.read_text()[-2000:]
    assert seconds < TIMEOUT_STOP_S - 5.0, f"{seconds:.1f} s to stop"
    assert LINES == agent.committed_samples()


def _inflight(root: Path) -> bytes:
    try:
        return (root / "state" / "inflight").read_bytes()
    except OSError:
        return b""
