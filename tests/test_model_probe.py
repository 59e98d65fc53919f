"""Candidates are loaded and golden-tested in a limited child process first: real children, real limits.

The models are tiny and valid; what they ask of onnxruntime is not: 1.2 GB for one tensor
(``Expand`` to 300M elements, a 220-byte model), or a loop of 10^12 steps.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import structlog
from onnx import TensorProto, helper, numpy_helper

from agent.config import ModelConfig
from agent.contract.manifest import ModelManifest
from agent.models.probe import ProbeLimits, probe_model
from agent.models.slot import ModelSlot
from tests.agent_config import agent_config
from tests.models import SPEC, write_linear_model

N = SPEC.n_features
REPO = Path(__file__).resolve().parent.parent


def _graph_model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, N])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def memory_bomb() -> bytes:
    """``score = max(expand(sum(features), [1, 300M]))``: valid, small, and 1.2 GB to run."""
    shape = numpy_helper.from_array(np.array([1, 300_000_000], dtype=np.int64), "shape")
    return _graph_model(
        [
            helper.make_node("ReduceSum", ["features"], ["s"], keepdims=1),
            helper.make_node("Expand", ["s", "shape"], ["big"]),
            helper.make_node("ReduceMax", ["big"], ["score"], axes=[1], keepdims=1),
        ],
        [shape],
    )


def endless_loop() -> bytes:
    """A Loop of 10^12 additions before it answers."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["c"], ["c_out"]),
            helper.make_node("Add", ["acc", "one"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1]),
        ],
        initializer=[numpy_helper.from_array(np.ones(1, dtype=np.float32), "one")],
    )
    return _graph_model(
        [
            helper.make_node("Loop", ["trips", "go", "zero"], ["total"], body=body),
            helper.make_node("ReduceSum", ["features", "axes"], ["s"], keepdims=1),
            helper.make_node("Add", ["s", "total"], ["score"]),
        ],
        [
            numpy_helper.from_array(np.array(10**12, dtype=np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "go"),
            numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )


def model_dir(directory: Path, data: bytes, version: int = 2) -> ModelManifest:
    """A store directory holding `data` under a manifest whose golden vectors it honestly passes.

    Both models here score ``sum(features)`` (the loop adds its trip count, never reached).
    """
    manifest = write_linear_model(directory, version=version)
    golden = tuple(
        g.model_copy(update={"expected": {"score": (float(np.float32(sum(np.float32(g.features)))),)}})
        for g in manifest.golden
    )
    manifest = manifest.model_copy(
        update={"sha256": hashlib.sha256(data).hexdigest(), "length": len(data), "golden": golden}
    )
    (directory / "model.onnx").write_bytes(data)
    (directory / "manifest.json").write_text(manifest.to_json())
    return manifest


def slot_config(tmp_path: Path, **update: object) -> ModelConfig:
    write_linear_model(tmp_path / "bundled", version=1)
    return ModelConfig.model_validate(
        {"directory": tmp_path / "store", "bundled": tmp_path / "bundled", **update}
    )


def probe(manifest: ModelManifest, data: bytes, limits: ProbeLimits) -> tuple[bool, str]:
    verdict = probe_model(manifest.to_json().encode(), data, limits)
    return verdict.ok, verdict.reason


class TestLimits:
    def test_a_good_model_passes_the_probe_and_reports_its_peak_memory(self, tmp_path: Path) -> None:
        manifest = write_linear_model(tmp_path / "m")
        verdict = probe_model(
            manifest.to_json().encode(), (tmp_path / "m" / "model.onnx").read_bytes(), ProbeLimits()
        )
        assert (True, "") == (verdict.ok, verdict.reason)
        assert verdict.peak_rss_bytes is not None
        assert verdict.peak_rss_bytes > 10 << 20

    def test_a_memory_bomb_is_refused_by_the_child_without_the_agent_paying_for_it(
        self, tmp_path: Path
    ) -> None:
        """The slot refuses the bomb for its memory; this process's peak RSS does not grow by a GB."""
        data = memory_bomb()
        assert len(data) < 512
        model_dir(tmp_path / "store" / "v2", data)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        slot = ModelSlot(slot_config(tmp_path))
        assert 1 == slot.load_initial().manifest.version
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        (refusal,) = slot.take_refusals()
        assert "needs more than probe_memory_bytes" in refusal.reason
        assert after - before < 300 << 20

    def test_a_refusal_by_the_probe_is_remembered_on_disk_and_not_probed_again(self, tmp_path: Path) -> None:
        model_dir(tmp_path / "store" / "v2", memory_bomb())
        ModelSlot(slot_config(tmp_path)).load_initial()
        with structlog.testing.capture_logs() as logs:
            slot = ModelSlot(slot_config(tmp_path))  # a restart
            assert 1 == slot.load_initial().manifest.version
        assert [] == [e for e in logs if e["event"] == "model_probed"]
        (refusal,) = slot.take_refusals()
        assert "remembered from an earlier check" in refusal.reason
        assert "probe_memory_bytes" in refusal.reason

    def test_a_model_that_computes_for_ever_is_stopped_by_the_cpu_limit(self, tmp_path: Path) -> None:
        data = endless_loop()
        manifest = model_dir(tmp_path / "m", data)
        ok, reason = probe(manifest, data, ProbeLimits(cpu_s=1.0, timeout_s=300.0))
        assert not ok
        assert "probe_cpu_s" in reason

    def test_a_probe_over_its_wall_clock_is_killed(self, tmp_path: Path) -> None:
        data = endless_loop()
        manifest = model_dir(tmp_path / "m", data)
        ok, reason = probe(manifest, data, ProbeLimits(cpu_s=600.0, timeout_s=2.0))
        assert (False, "loading took longer than probe_timeout_s 2.0s") == (ok, reason)


class TestTheAgentSurvives:
    def test_an_agent_under_an_address_space_limit_starts_despite_a_memory_bomb_in_its_store(
        self, tmp_path: Path
    ) -> None:
        """The reproduced crash loop: with the bomb in the store, every start failed.

        ``robotpm-agent check`` loads the store as a start does, here with its address space
        capped at 1 GiB (standing in for the unit's MemoryMax): it refuses v2 and serves v1.
        """
        (tmp_path / "logs").mkdir()
        write_linear_model(tmp_path / "bundled", version=1)
        model_dir(tmp_path / "store" / "v2", memory_bomb())
        config = tmp_path / "config.toml"
        config.write_text(agent_config(port=1883, robot_id="r1"))
        cap = 1 << 30

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

        result = subprocess.run(
            [sys.executable, "-m", "agent.cli", "check", "--config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            preexec_fn=limit,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=300,
        )
        assert 0 == result.returncode, result.stderr[-2000:]
        assert "model ok: test-linear@1" in result.stdout
        assert "probe_memory_bytes" in result.stdout + result.stderr
