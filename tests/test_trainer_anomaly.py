"""The anomaly-only task: an IsolationForest fitted on healthy windows, exported as the compact graph."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from agent.contract.manifest import ModelManifest
from tests.fleets import small_fleet
from tests.trainer_configs import trainer_toml
from trainer import cli

CONFIG = trainer_toml(trees=40, horizon_s=60.0)


@pytest.fixture(scope="module", name="fleet")
def _fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return small_fleet(tmp_path_factory.mktemp("fleet"), seed=21)


def test_trains_on_healthy_windows_and_ranks_faults_higher(fleet: tuple[Path, Path], tmp_path: Path) -> None:
    """`--task anomaly` registers a compact-graph model whose score ranks fault windows above healthy ones."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG, encoding="utf-8")
    out = tmp_path / "models"
    argv = ["--config", str(config), "--train-csv", str(fleet[0]), "--test-csv", str(fleet[1])]
    assert cli.main([*argv, "--out", str(out), "--task", "anomaly", "--no-report"]) == 0
    version = out / "arm-anomaly" / "1"
    manifest = ModelManifest.read(version)
    assert manifest.task == "anomaly"
    head = manifest.heads[0]
    assert (head.output, head.failure_mode) == ("scores", "anomaly")
    assert head.thresholds.clear <= head.thresholds.warning <= head.thresholds.critical
    assert manifest.metrics["parity_max_abs_diff"] <= 1e-6
    assert manifest.metrics["pr_auc"] > 0.3
    graph = onnx.load(str(version / "model.onnx"))
    assert [n.op_type for n in graph.graph.node] == ["TreeEnsembleRegressor", "Mul", "Exp"]
    session = ort.InferenceSession(str(version / "model.onnx"))
    for golden in manifest.golden:
        got = session.run(["scores"], {"features": np.array([golden.features], dtype=np.float32)})[0][0]
        np.testing.assert_allclose(got, golden.expected["scores"], atol=golden.tolerance)


def test_needs_no_ground_truth(fleet: tuple[Path, Path], tmp_path: Path) -> None:
    """Logs without truth.csv still train an anomaly detector (every window is taken as healthy)."""
    unlabelled = tmp_path / "unlabelled"
    for robot in fleet[0].iterdir():
        (unlabelled / robot.name).mkdir(parents=True)
        shutil.copy(robot / "arm1.csv", unlabelled / robot.name / "arm1.csv")
    config = tmp_path / "config.toml"
    config.write_text(CONFIG, encoding="utf-8")
    out = tmp_path / "models"
    argv = ["--config", str(config), "--train-csv", str(unlabelled), "--test-csv", str(fleet[1])]
    assert cli.main([*argv, "--out", str(out), "--task", "anomaly", "--no-report"]) == 0
    assert ModelManifest.read(out / "arm-anomaly" / "1").task == "anomaly"
