"""No permanent crash loop: what the agent died in is remembered on disk and skipped at the next start.

Real agent subprocesses, SIGKILLed as systemd kills a start that never ends (TimeoutStartSec)
or a loop that stopped feeding the watchdog. The model whose golden test never returns is a
real ONNX graph (a Loop of 10^15 turns); the read that never returns is injected into the
follower of one stream (as a hung NFS read would behave) through a ``sitecustomize`` module.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.contract.manifest import file_sha256
from tests.agent_config import agent_config, stream
from tests.agent_runs import AgentRun, outbox_alerts
from tests.models import SPEC, adding_loop_body, write_linear_model

REPO = Path(__file__).resolve().parent.parent
HEADER = "ts,J1,T1\n"
FAULT = [0.1] * 12 + [1.0] * 12 + [0.1] * 16

STALLED_READ = """
import os, threading
stalled = os.environ.get("STALL_STREAM")
if stalled:
    from agent.ingest import follower as _follower
    _read = _follower.StreamFollower.read
    def read(self, max_bytes):
        if self._stream.name == stalled:
            threading.Event().wait()  # never returns, like a read from a hung NFS mount
        return _read(self, max_bytes)
    _follower.StreamFollower.read = read
"""


def lines(start: int, currents: list[float]) -> str:
    return "".join(f"{start + i}.0,{c},40.0\n" for i, c in enumerate(currents))


def spinning_onnx(n_features: int) -> bytes:
    """A model taking ``features`` to ``score`` that first turns a Loop 10^15 times: it never returns."""
    body = adding_loop_body(numpy_helper.from_array(np.zeros(1, np.float32), "zero"))
    graph = helper.make_graph(
        [
            helper.make_node("Loop", ["M", "cond", "v0"], ["v_final"], body=body),
            helper.make_node("MatMul", ["features", "W"], ["product"]),
            helper.make_node("Add", ["product", "v_final"], ["score"]),
        ],
        "spin",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=[
            numpy_helper.from_array(np.array(10**15, np.int64), "M"),
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(np.zeros(1, np.float32), "v0"),
            numpy_helper.from_array(np.zeros((n_features, 1), np.float32), "W"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_spinning_model(directory: Path, version: int) -> None:
    """A store model with a valid manifest (sha256, length) whose golden test never ends."""
    manifest = write_linear_model(directory, version=version)
    (directory / "model.onnx").write_bytes(spinning_onnx(SPEC.n_features))
    sha, length = file_sha256(directory / "model.onnx")
    (directory / "manifest.json").write_text(
        manifest.model_copy(update={"sha256": sha, "length": length}).to_json()
    )


class Agent(AgentRun):
    """The real agent in `root`, streams ``arm1`` (and ``arm2``), no broker: alerts wait in the outbox."""

    def __init__(self, root: Path, streams: tuple[str, ...] = ("arm1",), *, isolate: bool = True) -> None:
        super().__init__(root / "config.toml", root / "agent.out")
        self.root = root
        for name in streams:
            (root / name).mkdir(parents=True, exist_ok=True)
        write_linear_model(root / "bundled", version=1)
        self.config.write_text(
            agent_config(
                port=1,
                robot_id="r1",
                heartbeat_interval_s=0.5,
                model={"isolate": isolate},
                streams=[stream(name, name) for name in streams],
                ingest={"watch": "poll", "poll_interval_s": 0.05},
                policy={"on_delay_windows": 2, "off_delay_windows": 2},
            )
        )

    def append(self, name: str, text: str) -> None:
        path = self.root / name / f"{name}.csv"
        new = not path.exists()
        with path.open("a") as handle:
            handle.write((HEADER if new else "") + text)

    def hang_then_kill(self, timeout: float = 30.0) -> None:
        """Wait until the agent reports a step stuck (hang_report_s, 10 s) or `timeout`, then SIGKILL it.

        systemd would kill it later (TimeoutStartSec, WatchdogSec), after the stuck mark too.
        """
        deadline = time.monotonic() + timeout
        while not self.events("step_stuck") and time.monotonic() < deadline:
            assert self.running(), "the agent exited instead of hanging"
            time.sleep(0.1)
        self.kill()

    def alerts(self) -> list[dict[str, Any]]:
        return outbox_alerts(self.root / "state")


@pytest.fixture(name="stalled_read")
def _stalled_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make the agents started afterwards hang forever in the named stream's read."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(STALLED_READ)

    def stall(name: str) -> None:
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
        )
        monkeypatch.setenv("STALL_STREAM", name)

    return stall


def test_a_store_model_whose_golden_test_never_ends_is_skipped_at_the_next_start(tmp_path: Path) -> None:
    """v2 hangs the start; killed as systemd would, the agent starts the next time on v1, says why.

    Without the probe child (isolate = false), whose own limits would refuse it first.
    """
    agent = Agent(tmp_path, isolate=False)
    write_spinning_model(tmp_path / "store" / "v2", version=2)
    agent.start()
    try:
        agent.hang_then_kill()
        assert not agent.events("agent_started")
        agent.start()  # what systemd's Restart=on-failure does next
        agent.wait(lambda: len(agent.events("agent_started")) == 1, "a start that is not hung")
        [started] = agent.events("agent_started")
        assert "test-linear@1" == started["model"]
        [blamed] = agent.events("crash_cause_remembered")
        assert str(tmp_path / "store" / "v2") in blamed["component"]
        assert "hung while loading the model" in blamed["reason"]
        refused = [
            e for e in agent.events("model_refused") if e.get("source") == str(tmp_path / "store" / "v2")
        ]
        assert refused, "the refusal is reported (and published as a rejected model status)"
        agent.wait(lambda: f"model:{tmp_path / 'store' / 'v2'}" in agent.status(), "status names it")
        agent.append("arm1", lines(0, FAULT))
        agent.wait(lambda: len(agent.alerts()) == 2, "the fault's alerts, scored by v1")
        assert {1} == {a["model"]["version"] for a in agent.alerts()}
        assert 0 == agent.stop()
        skip = json.loads((tmp_path / "state" / "skip.json").read_text())
        assert [f"model:{tmp_path / 'store' / 'v2'}"] == list(skip)
    finally:
        agent.kill()


def test_a_stream_whose_read_hangs_the_agent_is_skipped_and_the_others_go_on(
    tmp_path: Path, stalled_read: Callable[[str], None]
) -> None:
    """arm1's read never returns: the loop is stuck, killed, restarted with the same cause; the second
    start skips arm1 (reported), and arm2's fault is alerted.
    """
    agent = Agent(tmp_path, streams=("arm1", "arm2"))
    agent.append("arm1", lines(0, [0.1] * 8))
    stalled_read("arm1")
    agent.start()
    try:
        agent.hang_then_kill()
        [stuck] = agent.events("step_stuck")
        assert "stream:arm1" == stuck["component"]
        assert 1 == len(agent.events("agent_started")), "the first start got that far"
        agent.start()  # the cause is still there: the read of arm1 would hang again
        agent.wait(lambda: len(agent.events("agent_started")) == 2, "the second start")
        [skipped] = agent.events("stream_skipped")
        assert "arm1" == skipped["stream"]
        assert "hung while reading it" in skipped["reason"]
        agent.append("arm2", lines(0, FAULT))
        agent.wait(lambda: len([a for a in agent.alerts() if a["stream"] == "arm2"]) == 2, "arm2's alerts")
        agent.wait(lambda: "skipped" in agent.status(), "status says arm1 is skipped")
        assert 0 == agent.stop()
    finally:
        agent.kill()


def test_a_kill_from_outside_during_ordinary_work_blames_nothing(tmp_path: Path) -> None:
    """SIGKILL while the agent reads and scores (an operator, an OOM kill elsewhere): nothing is skipped."""
    agent = Agent(tmp_path, streams=("arm1", "arm2"))
    agent.start()
    try:
        agent.wait(lambda: bool(agent.events("agent_started")), "the start")
        for i in range(20):  # keep it busy, kill it mid-work
            agent.append("arm1", lines(i * 40, FAULT))
            agent.append("arm2", lines(i * 40, FAULT))
        agent.kill()
        agent.start()
        agent.wait(lambda: len(agent.events("agent_started")) == 2, "the restart")
        agent.wait(lambda: len([a for a in agent.alerts() if a["stream"] == "arm1"]) == 40, "every alert")
        assert not agent.events("crash_cause_remembered")
        assert not agent.events("stream_skipped")
        assert 0 == agent.stop()
    finally:
        agent.kill()
    assert not (tmp_path / "state" / "skip.json").exists()


def test_the_breadcrumbs_and_the_memory_live_in_the_state_directory(tmp_path: Path) -> None:
    """After a clean run: inflight (allocated, empty slots), fatal.log (empty), no skip.json."""
    agent = Agent(tmp_path)
    agent.start()
    try:
        agent.wait(lambda: bool(agent.events("agent_started")), "the start")
        assert 0 == agent.stop()
    finally:
        agent.kill()
    state = tmp_path / "state"
    assert 2048 == (state / "inflight").stat().st_size
    assert b"" == (state / "inflight").read_bytes().strip()
    assert 0 == (state / "fatal.log").stat().st_size
    assert not (state / "skip.json").exists()
    assert os.stat(state / "inflight").st_mode & 0o777 == 0o600
