"""The champion/challenger gate: a new version is promoted only if it beats the champion on the same data.

Both models are scored with onnxruntime (what the fleet will run) on the same
held-out windows, each with its own manifest's feature spec, and compared by the
selection metric named in config (``trainer.selection.metric``). Without a
champion the first version passes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.contract.manifest import MODEL_FILE, ModelManifest
from trainer.config import TrainerConfig
from trainer.errors import GateError
from trainer.metrics import HIGHER_IS_BETTER, classifier_metric
from trainer.registry import Registry
from trainer.run import RunResult
from trainer.stages.extraction import DataExtractionAnalysis, Dataset
from trainer.stages.preparation import DataPreparation
from trainer.stages.trained_model import run_onnx
from trainer.stages.truth import HEALTHY


def score_version(
    registry: Registry, version: int, dataset: Dataset, config: TrainerConfig, metric: str
) -> float:
    """The selection metric of one registered version on a dataset, scored by onnxruntime."""
    manifest = registry.manifest(version)
    return score_manifest(manifest, registry.path(version) / MODEL_FILE, dataset, config, metric)


def score_manifest(
    manifest: ModelManifest, model_path: Path, dataset: Dataset, config: TrainerConfig, metric: str
) -> float:
    """The selection metric of a model file on a dataset, windows cut with the model's own spec."""
    if manifest.task != "failure_classifier":
        raise GateError(f"{manifest.label}: the gate compares failure classifiers, not {manifest.task}")
    classes = (HEALTHY, *dict.fromkeys(head.failure_mode for head in manifest.heads))
    preparation = DataPreparation.for_config(manifest.feature_spec, config, classes)
    windows = preparation.windows(dataset)
    onnx_bytes = model_path.read_bytes()
    full = np.zeros((len(windows), len(windows.classes)))
    outputs: dict[str, np.ndarray] = {}
    for head in manifest.heads:
        if head.output not in outputs:
            outputs[head.output] = run_onnx(onnx_bytes, windows.features, head.output)
        full[:, classes.index(head.failure_mode)] = outputs[head.output][:, head.column]
    full[:, 0] = np.clip(1.0 - full[:, 1:].sum(axis=1), 0.0, 1.0)
    scored = range(len(classes))
    return classifier_metric(metric, windows.label, full, scored, config.thresholds.warning_false_alarm_rate)


def gate(
    registry: Registry, challenger: int, dataset: Dataset, config: TrainerConfig
) -> tuple[str, float | None, float | None]:
    """(metric, challenger score, champion score) on `dataset`; champion None when there is none."""
    metric = config.selection.metric
    if metric not in HIGHER_IS_BETTER or metric in ("rmse", "phm_score"):
        raise GateError(f"trainer.selection.metric {metric!r} cannot rank failure classifiers")
    champion = registry.champion
    challenger_score = score_version(registry, challenger, dataset, config, metric)
    if champion is None or champion == challenger:
        return metric, challenger_score, None
    return metric, challenger_score, score_version(registry, champion, dataset, config, metric)


def promote_version(
    registry: Registry,
    version: int,
    config: TrainerConfig,
    *,
    force: bool = False,
    test_path: Path | None = None,
) -> None:
    """Promote through the gate, scoring both on `test_path` (or on the same stored test data)."""
    if force or registry.champion is None:
        registry.promote(version, force=force, gate_metric=config.selection.metric)
        return
    if test_path is None:
        raise GateError(
            f"the gate needs held-out data to compare v{version} with champion v{registry.champion}: "
            "pass --test-csv (or --force)"
        )
    dataset = DataExtractionAnalysis.for_config(config).extract(test_path)
    _promote_on(registry, version, dataset, config)


def promote_through_gate(
    config: TrainerConfig, result: RunResult, *, registry_root: Path | None = None, name: str | None = None
) -> None:
    """After a training run: promote its version if it beats the champion on the run's test data."""
    if result.test_data is None:
        raise GateError("this run kept no test data to compare against the champion")
    registry = Registry(registry_root or config.registry, name or config.model_name)
    _promote_on(registry, result.manifest.version, result.test_data, config)


def _promote_on(registry: Registry, version: int, dataset: Dataset, config: TrainerConfig) -> None:
    metric, challenger_score, champion_score = gate(registry, version, dataset, config)
    registry.promote(
        version,
        gate_metric=metric,
        challenger_score=challenger_score,
        champion_score=champion_score,
        higher_is_better=HIGHER_IS_BETTER[metric],
    )
