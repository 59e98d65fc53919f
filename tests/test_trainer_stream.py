"""Stream mode: retrain when enough new data arrived (or drift asks), promote only through the gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from robotpm_sim.fleet import simulate_fleet
from trainer import cli
from trainer.config import FeatureConfig, LabelConfig, ModelParams, StreamTrainerConfig, TrainerConfig
from trainer.registry import Registry
from trainer.stream import check_once


def _config(tmp_path: Path, min_new_rows: int) -> TrainerConfig:
    return TrainerConfig(
        model_name="arm-stream",
        registry=tmp_path / "models",
        work_dir=tmp_path / "work",
        features=FeatureConfig(window=80, hop=40),
        labels=LabelConfig(horizon_s=60.0),
        model=ModelParams(n_estimators=6, max_depth=6),
        incoming=StreamTrainerConfig(incoming=tmp_path / "incoming", min_new_rows=min_new_rows),
    )


def test_waits_until_enough_rows_then_trains_and_promotes_the_first(tmp_path: Path) -> None:
    """Too few rows: waiting; enough: a version is trained and (no champion yet) promoted."""
    config = _config(tmp_path, min_new_rows=30_000)
    incoming = config.incoming.incoming
    common = {
        "seconds": 1200.0,
        "rate_hz": 10.0,
        "fault_duration_s": 150.0,
        "mean_healthy_s": 200.0,
        "seed": 9,
    }
    simulate_fleet(tmp_path / "all", robots=4, **common)
    incoming.mkdir()
    shutil.copytree(tmp_path / "all" / "robot-001", incoming / "robot-001")
    shutil.copytree(tmp_path / "all" / "robot-002", incoming / "robot-002")
    waiting = check_once(config)
    assert (waiting.action, waiting.rows) == ("waiting", 24_000)
    assert Registry(config.registry, "arm-stream").versions() == []
    shutil.copytree(tmp_path / "all" / "robot-003", incoming / "robot-003")
    shutil.copytree(tmp_path / "all" / "robot-004", incoming / "robot-004")
    trained = check_once(config)
    assert trained.action == "promoted"
    assert Registry(config.registry, "arm-stream").champion == 1
    assert check_once(config).action == "waiting"
    assert json.loads((config.work_dir / "stream_state.json").read_text())["rows"] == 48_000


def test_a_drift_report_triggers_retraining_gated_against_the_champion(tmp_path: Path) -> None:
    """A drift report retrains without new rows; the same data cannot beat the champion, so it stays."""
    config = _config(tmp_path, min_new_rows=1)
    incoming = config.incoming.incoming
    simulate_fleet(
        incoming, robots=4, seconds=1200.0, rate_hz=10.0, seed=9, fault_duration_s=150.0, mean_healthy_s=200.0
    )
    assert check_once(config).action == "promoted"
    config = config.model_copy(
        update={"incoming": config.incoming.model_copy(update={"min_new_rows": 10**9})}
    )
    assert check_once(config).action == "waiting"
    (incoming / "drift-2026.json").write_text(json.dumps({"retrain": True}))
    outcome = check_once(config)
    assert outcome.action == "trained"
    assert "does not beat champion v1" in outcome.detail
    assert Registry(config.registry, "arm-stream").champion == 1


def test_cli_stream_once(tmp_path: Path) -> None:
    """`robotpm-train --mode stream --once` checks once and exits 0."""
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        f'[trainer]\nwork_dir = "{tmp_path / "w"}"\n[trainer.incoming]\nincoming = "{tmp_path / "in"}"\n',
        encoding="utf-8",
    )
    assert cli.main(["--config", str(config_path), "--mode", "stream", "--once"]) == 0
