"""Small simulated fleets for trainer tests: enough robots and faults to train on in seconds."""

from __future__ import annotations

from pathlib import Path

from robotpm_sim.fleet import simulate_fleet


def small_fleet(root: Path, seed: int) -> tuple[Path, Path]:
    """4 training robots (seed) and 2 test robots (seed + 1), 1,500 s at 10 Hz, short faults.

    Returns the train and test log directories under `root`.
    """
    common = {"seconds": 1500.0, "rate_hz": 10.0, "fault_duration_s": 150.0, "mean_healthy_s": 200.0}
    simulate_fleet(root / "train", robots=4, seed=seed, **common)
    simulate_fleet(root / "test", robots=2, seed=seed + 1, **common)
    return root / "train", root / "test"
