"""The bundled default model: simulated fleet history → trained, checked model in ``agent/models/bundled``.

`build_bundle` is what ``robotpm-train bundle --seed 7`` runs. Training data comes
straight from the simulator's Python API (no CSV round trip): a fleet whose faults
last from about a minute to about half an hour, so the model recognises a
fault's signature at a given severity whether it develops slowly (history) or
fast (the live demo). Test robots are separate fleet members (other seeds).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.config import TrainerConfig
from trainer.errors import ExportError
from trainer.run import RunResult
from trainer.stages.extraction import Dataset, RobotSeries
from trainer.stages.truth import Truth
from trainer.tasks.failure import train_failure_classifier

# (fault duration s, mean healthy gap s) per robot of the fleet, cycled: slow and fast faults.
_FAULT_PROFILES: tuple[tuple[float, float], ...] = (
    (1800.0, 2400.0),
    (600.0, 900.0),
    (120.0, 240.0),
    (45.0, 90.0),
)


def simulated_dataset(
    config: TrainerConfig,
    robot_ids: Sequence[str],
    *,
    hours: float,
    rate_hz: float,
    seed: int,
) -> Dataset:
    """Histories of simulated robots as a `Dataset`, channels mapped like a log file would be."""
    from robotpm_sim.fleet import simulate_history
    from robotpm_sim.records import COLUMNS

    schema = config.record_schema()
    columns = [COLUMNS.index(name) for name in schema.channels]
    digest = hashlib.sha256()
    series: list[RobotSeries] = []
    for number, robot_id in enumerate(robot_ids):
        duration, gap = _FAULT_PROFILES[number % len(_FAULT_PROFILES)]
        _, values, truth = simulate_history(
            robot_id, hours * 3600.0, rate_hz, seed, fault_duration_s=duration, mean_healthy_s=gap
        )
        table = np.ascontiguousarray(values[:, columns])
        digest.update(robot_id.encode())
        digest.update(values.tobytes())
        rul = np.where(np.isnan(truth.rul_s), np.inf, truth.rul_s)
        series.append(
            RobotSeries(
                robot=robot_id,
                source=f"simulator:{robot_id}",
                timestamps=values[:, 0].copy(),
                values=table,
                truth=Truth(
                    mode=truth.mode_names,
                    component=truth.components,
                    health=truth.health,
                    failure=truth.failure,
                    rul_s=rul,
                ),
            )
        )
    return Dataset(
        channels=schema.canonical_channels,
        series=series,
        data_hash=digest.hexdigest(),
        sources=[f"simulator seed={seed} hours={hours} rate_hz={rate_hz} robots={list(robot_ids)}"],
    )


def build_bundle(
    config: TrainerConfig, out: Path, *, seed: int | None = None, report: bool = False
) -> RunResult:
    """Simulate, train, check and write the bundled model to `out`; refuse one over the size cap."""
    seed = config.seed if seed is None else seed
    bundle = config.bundle
    train_ids = [f"robot-{n:03d}" for n in range(1, bundle.robots + 1)]
    test_ids = [f"robot-{n:03d}" for n in range(101, 101 + bundle.test_robots)]
    train = simulated_dataset(config, train_ids, hours=bundle.hours, rate_hz=bundle.rate_hz, seed=seed)
    test = simulated_dataset(config, test_ids, hours=bundle.hours, rate_hz=bundle.rate_hz, seed=seed)
    config = config.model_copy(update={"seed": seed})
    result = train_failure_classifier(config, train, test, write_registry=False, report=report)
    size = len(result.exported.onnx_bytes)
    if size > bundle.max_model_bytes:
        raise ExportError(
            f"the bundled model is {size} bytes, over the {bundle.max_model_bytes}-byte cap: "
            "lower trainer.model.n_estimators or max_depth"
        )
    from trainer.registry import write_directory_atomically

    result.bundled_dir = write_directory_atomically(out, result.files)
    return result
