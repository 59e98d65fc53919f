"""Drift: a stream whose features leave the training distribution is reported as drifting."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.streams.drift import DriftMonitor
from tests.models import SPEC, write_linear_model


def monitor(tmp_path: Path, **options: float) -> DriftMonitor:
    return DriftMonitor(write_linear_model(tmp_path), **options)  # reference: mean 0, std 1


class TestDriftMonitor:
    def test_state_is_unknown_until_warmed_up(self, tmp_path: Path) -> None:
        """Fewer windows than the warm-up say nothing either way."""
        drift = monitor(tmp_path, warmup=50)
        drift.update(np.zeros((10, SPEC.n_features)))
        assert "unknown" == drift.state

    def test_features_like_the_training_data_are_ok(self, tmp_path: Path) -> None:
        """Windows drawn from the reference distribution keep the state ok."""
        drift = monitor(tmp_path)
        drift.update(np.random.default_rng(0).normal(size=(2000, SPEC.n_features)))
        assert "ok" == drift.state

    def test_features_shifted_by_many_stds_are_drifting(self, tmp_path: Path) -> None:
        """A sustained 6-sigma shift of one feature in four is drifting, and that feature leads."""
        drift = monitor(tmp_path)
        data = np.random.default_rng(1).normal(size=(2000, SPEC.n_features))
        data[:, 1] += 6.0
        drift.update(data)
        assert "drifting" == drift.state
        assert 1 == drift.snapshot()["top"][0][0]

    def test_batched_updates_equal_one_at_a_time(self, tmp_path: Path) -> None:
        """Folding windows in one batch or one by one gives the same running means."""
        data = np.random.default_rng(2).normal(size=(300, SPEC.n_features))
        whole, single = monitor(tmp_path / "a"), monitor(tmp_path / "b")
        whole.update(data)
        for row in data:
            single.update(row[None, :])
        np.testing.assert_allclose(whole.z_scores(), single.z_scores(), rtol=1e-9)
