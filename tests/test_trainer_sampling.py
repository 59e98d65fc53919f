"""The trainer writes the rate its windows were cut at, and takes windows in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleets import small_fleet
from trainer.config import FeatureConfig, ModelParams, TrainerConfig
from trainer.tasks.failure import train_failure_classifier


@pytest.fixture(scope="module", name="fleet")
def _fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The small 10 Hz fleet of tests/fleets.py."""
    return small_fleet(tmp_path_factory.mktemp("fleet"), seed=7)


def _train(fleet: tuple[Path, Path], tmp_path: Path, features: FeatureConfig) -> TrainerConfig:
    return TrainerConfig(
        registry=tmp_path / "models", features=features, model=ModelParams(n_estimators=4, max_depth=4)
    )


def test_the_manifest_says_the_rate_the_training_data_was_logged_at(
    fleet: tuple[Path, Path], tmp_path: Path
) -> None:
    """Windows in samples on 10 Hz logs: the spec's sampling says 10 Hz, with the resampling gap rule."""
    config = _train(fleet, tmp_path, FeatureConfig(window=80, hop=40, max_gap_s=0.7))
    spec = train_failure_classifier(config, *fleet).manifest.feature_spec
    assert spec.sampling is not None
    assert spec.sampling.rate_hz == pytest.approx(10.0, rel=1e-5)
    assert spec.sampling.max_gap_s == 0.7


def test_windows_in_seconds_are_whole_samples_at_the_resampling_rate(
    fleet: tuple[Path, Path], tmp_path: Path
) -> None:
    """window_s = 8, hop_s = 4 resampled to 5 Hz: 40-sample windows, hop 20, at 5 Hz in the manifest."""
    config = _train(fleet, tmp_path, FeatureConfig(window_s=8.0, hop_s=4.0, resample_hz=5.0))
    spec = train_failure_classifier(config, *fleet).manifest.feature_spec
    assert (spec.window, spec.hop, spec.window_s, spec.hop_s) == (40, 20, 8.0, 4.0)
    assert spec.sampling is not None
    assert spec.sampling.rate_hz == 5.0
