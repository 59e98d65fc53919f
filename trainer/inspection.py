"""``robotpm-train inspect``: what the trainer will see in a data set, before it trains on it.

For each split given: rows per robot with the observed sample rate and its jitter, failure
events per mode (from the configured label source), windows per label class (the label
balance) and rows quarantined by reason, with a few examples of each.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from agent.contract.features import FeatureSpec
from agent.contract.sampling import measure_rate
from trainer.config import TrainerConfig
from trainer.run import training_rate
from trainer.stages.extraction import DataExtractionAnalysis, Dataset
from trainer.stages.preparation import DataPreparation, label_classes

EXAMPLES_PER_REASON = 3


def sample_rate(timestamps: np.ndarray[Any, Any]) -> tuple[float, float]:
    """(observed rate in Hz from the median interval, jitter: the intervals' std over their median).

    The agent's measure too (`agent.contract.sampling.measure_rate`).
    """
    measure = measure_rate(timestamps)
    return measure.rate_hz, measure.jitter


def describe(config: TrainerConfig, splits: dict[str, Path]) -> str:
    """The inspection report of the named splits, as text."""
    extraction = DataExtractionAnalysis.for_config(config)
    datasets = {name: extraction.extract(path) for name, path in splits.items()}
    classes = label_classes(*datasets.values())
    first = next(iter(datasets.values()), None)
    spec = config.features.spec(
        config.canonical_channels, None if first is None else training_rate(config, first)
    )
    lines = [
        f"label source: {config.labels.source}; horizon {config.labels.horizon_s:g} s, "
        f"tolerance {config.labels.tolerance_s:g} s; window {spec.window} samples, hop {spec.hop}"
        + ("" if spec.rate_hz is None else f" at {spec.rate_hz:.4g} Hz (the rate written into the model)"),
    ]
    for name, dataset in datasets.items():
        lines.extend(_split(name, splits[name], dataset, config, classes, spec))
    return "\n".join(lines) + "\n"


def _split(
    name: str,
    path: Path,
    dataset: Dataset,
    config: TrainerConfig,
    classes: tuple[str, ...],
    spec: FeatureSpec,
) -> list[str]:
    lines = [f"== {name}: {path}", f"rows: {dataset.n_rows} good, {len(dataset.quarantine)} quarantined"]
    for series in dataset.series:
        rate, jitter = sample_rate(series.timestamps)
        span = float(series.timestamps[-1] - series.timestamps[0]) if len(series) else 0.0
        lines.append(
            f"  robot {series.robot}: {len(series)} rows over {span:.0f} s, {rate:.4g} Hz observed, "
            f"jitter {jitter:.1%} of the interval"
        )
    events = Counter(event.mode for event in dataset.failure_events())
    lines.append(
        "failure events per mode: " + (", ".join(f"{m} {n}" for m, n in sorted(events.items())) or "none")
    )
    if dataset.has_truth:
        preparation = DataPreparation.for_config(spec, config, classes)
        windows = preparation.windows(dataset)
        counts = Counter(windows.classes[i] for i in windows.label.tolist())
        balance = ", ".join(f"{c} {counts.get(c, 0)}" for c in windows.classes)
        lines.append(
            f"windows per label: {balance} (early degradation left out: {int(windows.ambiguous.sum())})"
        )
    else:
        lines.append("windows per label: no labels for some robots (failure and rul tasks need them)")
    lines.extend(f"note: {note}" for note in dict.fromkeys(dataset.notes))
    reasons = Counter(row.reason for row in dataset.quarantine)
    lines.append(
        "quarantine by reason: " + (", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none")
    )
    for reason in sorted(reasons):
        examples = [row for row in dataset.quarantine if row.reason == reason][:EXAMPLES_PER_REASON]
        for row in examples:
            lines.append(f"  {reason}: {row.source}:{row.line} {row.detail}")
    return lines
