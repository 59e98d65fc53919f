"""The remaining-useful-life task on robot logs: a capped-RUL regressor with a lower-is-worse head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from agent.contract.manifest import ModelManifest
from robotpm_sim.fleet import simulate_fleet
from tests.trainer_configs import trainer_toml
from trainer import cli

CONFIG = trainer_toml(trees=12, depth=8, horizon_s=120.0)


def test_rul_regressor_learns_time_to_failure(tmp_path: Path) -> None:
    """`--task rul` registers a parity-checked remaining_life model that beats a constant 'no fault' guess."""
    common = {"seconds": 1800.0, "rate_hz": 10.0, "fault_duration_s": 150.0, "mean_healthy_s": 200.0}
    simulate_fleet(tmp_path / "train", robots=4, seed=31, **common)
    simulate_fleet(tmp_path / "test", robots=2, seed=32, **common)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG, encoding="utf-8")
    out = tmp_path / "models"
    argv = [
        "--config",
        str(config),
        "--train-csv",
        str(tmp_path / "train"),
        "--test-csv",
        str(tmp_path / "test"),
    ]
    assert cli.main([*argv, "--out", str(out), "--task", "rul"]) == 0
    version = out / "arm-rul" / "1"
    manifest = ModelManifest.read(version)
    assert manifest.task == "remaining_life"
    head = manifest.heads[0]
    assert head.direction == "lower_is_worse"
    assert head.thresholds.critical <= head.thresholds.warning <= head.thresholds.clear <= 120.0
    assert manifest.metrics["parity_max_abs_diff"] <= 1e-2
    # predicting the cap (no fault) on this data errs by 58 s RMS on the faulty windows
    assert manifest.metrics["rmse_s_faulty"] < 48.0
    assert (version / "report" / "report.pdf").exists()
    session = ort.InferenceSession(str(version / "model.onnx"))
    for golden in manifest.golden:
        got = session.run(["variable"], {"features": np.array([golden.features], dtype=np.float32)})[0][0]
        np.testing.assert_allclose(got, golden.expected["variable"], rtol=1e-5, atol=golden.tolerance)
