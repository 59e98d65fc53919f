"""The bundled default model: small, self-consistent, loud on the simulator's faults and quiet when healthy.

Scores come from onnxruntime on the agent's own `batch_features` of simulator output
(the live simulator's Python API, 50 Hz like the demo), read through the manifest
exactly as the agent does: output ``head.output``, column ``head.column``, a head
alerts after two consecutive windows at or over its warning threshold (the
default ``agent.policy.on_delay_windows``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from agent.contract.features import batch_features
from agent.contract.manifest import ModelManifest, file_sha256
from robotpm_sim.arm import ArmSimulator
from robotpm_sim.faults import FAULT_MODES, Fault
from robotpm_sim.records import COLUMNS
from trainer.config import DEFAULT_CHANNELS

BUNDLED = Path(__file__).resolve().parent.parent / "agent" / "models" / "bundled"
RATE_HZ = 50.0
ON_DELAY = 2


@pytest.fixture(scope="module", name="model")
def _model() -> tuple[ModelManifest, ort.InferenceSession]:
    manifest = ModelManifest.read(BUNDLED)
    return manifest, ort.InferenceSession(str(BUNDLED / "model.onnx"), providers=["CPUExecutionProvider"])


def _scores(model: tuple[ModelManifest, ort.InferenceSession], values: np.ndarray) -> np.ndarray:
    manifest, session = model
    columns = [COLUMNS.index(name) for name in DEFAULT_CHANNELS]
    features, _ = batch_features(values[:, columns], manifest.feature_spec)
    outputs = session.run(None, {manifest.onnx.input_name: features.astype(np.float32)})
    by_name = dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))
    return np.stack([by_name[h.output][:, h.column] for h in manifest.heads], axis=1)


def _alerting_heads(model: tuple[ModelManifest, ort.InferenceSession], scores: np.ndarray) -> set[str]:
    manifest, _ = model
    alerting = set()
    for i, head in enumerate(manifest.heads):
        over = (scores[:, i] >= head.thresholds.warning).astype(np.int64)
        run = np.convolve(over, np.ones(ON_DELAY, dtype=np.int64))[: len(over)]
        if (run >= ON_DELAY).any():
            alerting.add(head.failure_mode)
    return alerting


class TestBundledArtifact:
    def test_model_file_is_at_most_one_megabyte(self) -> None:
        """The bundled model.onnx is ≤ 1 MB."""
        assert (BUNDLED / "model.onnx").stat().st_size <= 1_000_000

    def test_manifest_validates_and_matches_the_model_file(self) -> None:
        """The manifest passes the agent's ModelManifest and its sha256/length are the file's."""
        manifest = ModelManifest.read(BUNDLED)
        assert (manifest.sha256, manifest.length) == file_sha256(BUNDLED / "model.onnx")
        assert {h.failure_mode for h in manifest.heads} == set(FAULT_MODES)
        assert manifest.feature_spec.channels == tuple(DEFAULT_CHANNELS.values())

    def test_graph_uses_standard_operator_domains_only(self) -> None:
        """Every node of the graph is in the default or ai.onnx.ml domain."""
        graph = onnx.load(str(BUNDLED / "model.onnx"))
        onnx.checker.check_model(graph)
        assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx.ml"}

    def test_golden_vectors_reproduce(self, model: tuple[ModelManifest, ort.InferenceSession]) -> None:
        """Each golden vector gives its expected outputs in onnxruntime."""
        manifest, session = model
        assert len(manifest.golden) >= 4
        for golden in manifest.golden:
            x = np.array([golden.features], dtype=np.float32)
            for name, expected in golden.expected.items():
                got = session.run([name], {manifest.onnx.input_name: x})[0][0]
                np.testing.assert_allclose(got, expected, atol=golden.tolerance)


class TestBundledBehaviour:
    @pytest.mark.parametrize("seed", [7, 8])
    @pytest.mark.parametrize("mode", FAULT_MODES)
    def test_a_live_fault_raises_its_own_head(
        self, model: tuple[ModelManifest, ort.InferenceSession], mode: str, seed: int
    ) -> None:
        """A fault developing over 30 s (the demo's) raises an alert on its head, and on no other."""
        sim = ArmSimulator("robot-001", rate_hz=RATE_HZ, seed=seed, faults=[Fault(mode, 10.0, 30.0, joint=2)])
        values, _ = sim.samples(0, int(60 * RATE_HZ))
        assert _alerting_heads(model, _scores(model, values)) == {mode}

    @pytest.mark.parametrize("seed", [7, 8, 9])
    def test_a_healthy_robot_stays_quiet_for_half_an_hour(
        self, model: tuple[ModelManifest, ort.InferenceSession], seed: int
    ) -> None:
        """Thirty minutes of a healthy robot raise no alert on any head."""
        sim = ArmSimulator("robot-001", rate_hz=RATE_HZ, seed=seed, faults=[])
        values, _ = sim.samples(0, int(1800 * RATE_HZ))
        assert _alerting_heads(model, _scores(model, values)) == set()
