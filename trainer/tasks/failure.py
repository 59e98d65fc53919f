"""The batch pipeline for robot sensor logs: the six stages in order, writing one registry version.

`train_failure_classifier` runs DataExtractionAnalysis → DataPreparation →
ModelSelection → ModelTraining → ModelEvaluationValidation → TrainedMLModel and
writes ``<registry>/<name>/<version>/`` (and, when asked, the bundled model
directory) only after every stage, the parity check included, has succeeded.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.contract.features import FeatureSpec
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, AlertHead, ModelManifest
from trainer.config import TrainerConfig
from trainer.errors import DataError
from trainer.registry import METRICS_FILE, Registry, write_directory_atomically
from trainer.stages.evaluation import Evaluation, ModelEvaluationValidation
from trainer.stages.extraction import DataExtractionAnalysis, Dataset
from trainer.stages.preparation import CLASSES, DataPreparation, WindowSet
from trainer.stages.selection import ModelSelection
from trainer.stages.trained_model import ExportedModel, TrainedMLModel
from trainer.stages.training import FittedModel, ModelTraining

DEFAULT_COMPONENTS: dict[str, str] = {
    "bearing_wear": "drive_train",
    "overheating": "motors",
    "gripper_wear": "gripper",
    "collision": "arm",
}
"""Failure mode → component, used when the ground truth does not name one."""


@dataclass(slots=True)
class RunResult:
    """What one pipeline run produced."""

    manifest: ModelManifest
    exported: ExportedModel
    evaluation: Evaluation
    fitted: FittedModel
    test: WindowSet
    test_proba: np.ndarray[Any, Any]
    version_dir: Path | None = None
    bundled_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    test_data: Dataset | None = None
    """The held-out data, kept for the champion/challenger gate."""


class StageTimer:
    """Wall-clock seconds spent in each named stage (summed when a stage runs twice)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def run(self, name: str, step: Callable[[], Any]) -> Any:
        """Run `step`, add its duration to `name`, return its result."""
        start = time.perf_counter()
        try:
            return step()
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def code_version() -> str:
    """The package version and, when run from a git checkout, the commit."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("robotpm")
    except PackageNotFoundError:
        base = "0+unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{base}+g{commit}" if commit else base


def config_hash(config: TrainerConfig) -> str:
    """sha256 of the trainer config's canonical JSON."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class PreparedData:
    """The output of DataExtractionAnalysis and DataPreparation for one run: data and windows."""

    spec: FeatureSpec
    train_data: Dataset
    test_data: Dataset
    train_windows: WindowSet
    test_windows: WindowSet


def prepare_windows(
    config: TrainerConfig,
    train: Path | Dataset,
    test: Path | Dataset,
    timer: StageTimer,
    *,
    require_truth: bool = True,
) -> PreparedData:
    """Extract both sources (unless already extracted) and cut them into labelled feature windows."""
    extraction = DataExtractionAnalysis(config.record_schema())
    train_data = (
        train if isinstance(train, Dataset) else timer.run("extract", lambda: extraction.extract(train))
    )
    test_data = test if isinstance(test, Dataset) else timer.run("extract", lambda: extraction.extract(test))
    spec = config.features.spec(config.canonical_channels)
    preparation = DataPreparation(
        spec,
        config.labels,
        CLASSES,
        resample_hz=config.features.resample_hz,
        max_gap_s=config.features.max_gap_s,
    )
    train_windows: WindowSet = timer.run(
        "prepare", lambda: preparation.windows(train_data, require_truth=require_truth)
    )
    test_windows: WindowSet = timer.run(
        "prepare", lambda: preparation.windows(test_data, require_truth=require_truth)
    )
    return PreparedData(spec, train_data, test_data, train_windows, test_windows)


def train_failure_classifier(
    config: TrainerConfig,
    train: Path | Dataset,
    test: Path | Dataset,
    *,
    registry_root: Path | None = None,
    name: str | None = None,
    bundled_dir: Path | None = None,
    write_registry: bool = True,
    report: bool = False,
    trainer: TrainedMLModel | None = None,
) -> RunResult:
    """Train, evaluate and export a failure classifier; write it only when every stage succeeded."""
    timer = StageTimer()
    prepared = prepare_windows(config, train, test, timer)
    spec, train_data, test_data = prepared.spec, prepared.train_data, prepared.test_data
    train_windows, test_windows = prepared.train_windows, prepared.test_windows
    fit_mask = ~train_windows.ambiguous
    if not (train_windows.label[fit_mask] > 0).any():
        raise DataError(
            "training data has no failure windows: labels are absent (no fault reaches the horizon)"
        )
    projection = None
    if config.model.projection:
        from trainer.stages.projection import contrast_matrix

        projection = contrast_matrix(spec.feature_names())[0]
    training = ModelTraining(config.model, config.seed, projection)
    candidates = config.selection.candidates or (config.model.kind,)
    selection = ModelSelection(training, candidates, config.selection.metric, config.selection.folds)
    ranked = timer.run("select", lambda: selection.select_classifier(train_windows, fit_mask))
    best = ranked[0]
    fit_set = train_windows.take(fit_mask)
    fitted: FittedModel = timer.run(
        "train", lambda: training.fit(fit_set.features, fit_set.label, kind=best.kind)
    )
    columns = {cls: col for col, cls in enumerate(fitted.classes)}
    failure_columns = {cls: col for cls, col in columns.items() if cls != 0}
    evaluation_stage = ModelEvaluationValidation(config.thresholds)
    validated = train_windows.take(best.validated)
    thresholds = timer.run(
        "evaluate",
        lambda: evaluation_stage.calibrate_heads(
            best.oof[best.validated], validated, {cls: cls for cls in failure_columns}
        ),
    )
    test_proba = fitted.estimator.predict_proba(test_windows.features.astype(np.float32))
    evaluation: Evaluation = timer.run(
        "evaluate",
        lambda: evaluation_stage.evaluate_classifier(test_proba, test_windows, columns, thresholds),
    )
    evaluation.metrics["cv_" + config.selection.metric] = best.score
    evaluation.selection = {r.kind: r.score for r in ranked}
    model_stage = trainer or TrainedMLModel(config.parity)
    exported: ExportedModel = timer.run("export", lambda: model_stage.export(fitted, test_windows.features))
    components = {**DEFAULT_COMPONENTS, **train_windows.components()}
    heads = [
        AlertHead(
            output=exported.score_output,
            column=col,
            component=components.get(CLASSES[cls], CLASSES[cls]),
            failure_mode=CLASSES[cls],
            meaning=(
                f"probability that {CLASSES[cls]} of the {components.get(CLASSES[cls], CLASSES[cls])} "
                f"leads to a failure within {config.labels.horizon_s:g} s"
            ),
            thresholds=thresholds[cls],
        )
        for cls, col in sorted(failure_columns.items())
    ]
    model_name = name or config.model_name
    registry = Registry(registry_root or config.registry, model_name)
    version = registry.next_version()
    lineage = {
        "data_hash": hashlib.sha256(f"{train_data.data_hash}:{test_data.data_hash}".encode()).hexdigest(),
        "train_data_hash": train_data.data_hash,
        "test_data_hash": test_data.data_hash,
        "code_version": code_version(),
        "config_hash": config_hash(config),
        "estimator": fitted.kind,
        "seed": str(config.seed),
    }
    metrics = dict(evaluation.metrics)
    metrics["parity_max_abs_diff"] = exported.max_abs_diff
    metrics["model_bytes"] = float(len(exported.onnx_bytes))
    manifest = TrainedMLModel.manifest(
        model_id=model_name,
        version=version,
        task="failure_classifier",
        spec=spec,
        exported=exported,
        heads=heads,
        train_features=fit_set.features,
        golden_features=golden_rows(test_windows, test_proba, columns),
        metrics=metrics,
        lineage=lineage,
    )
    profile = {"train": train_data.profile(), "test": test_data.profile()}
    metrics_doc = {
        **evaluation.to_json(),
        "parity": {"max_abs_diff": exported.max_abs_diff, "mismatch_fraction": exported.mismatch_fraction},
        "timings_s": timer.timings,
        "lineage": lineage,
    }
    files = version_files(manifest, exported, metrics_doc, config, train_data, test_data)
    files["profile.json"] = json_bytes(profile)
    if train_data.quarantine or test_data.quarantine:
        files["quarantine.csv"] = train_data.quarantine_csv() + test_data.quarantine_csv().split(b"\n", 1)[1]
    result = RunResult(
        manifest, exported, evaluation, fitted, test_windows, test_proba, profile=profile, test_data=test_data
    )
    if report:
        from trainer.report import classifier_report

        files.update(timer.run("report", lambda: classifier_report(result)))
    result.timings = timer.timings
    result.files = files
    return store_run(result, registry, version, write_registry=write_registry, bundled_dir=bundled_dir)


def json_bytes(data: Any) -> bytes:
    """Indented JSON with a final newline: how every JSON file of a model version is written."""
    return (json.dumps(data, indent=2) + "\n").encode()


def version_files(
    manifest: ModelManifest,
    exported: ExportedModel,
    metrics_doc: dict[str, Any],
    config: TrainerConfig,
    train_data: Dataset,
    test_data: Dataset,
) -> dict[str, bytes]:
    """The files every model version holds: model, manifest, metrics, the config and the data snapshot."""
    return {
        MODEL_FILE: exported.onnx_bytes,
        MANIFEST_FILE: manifest.to_json().encode(),
        METRICS_FILE: json_bytes(metrics_doc),
        "config.json": json_bytes(config.model_dump(mode="json")),
        "snapshot.json": json_bytes({"train": train_data.snapshot(), "test": test_data.snapshot()}),
    }


def store_run(
    result: RunResult,
    registry: Registry,
    version: int,
    *,
    write_registry: bool,
    bundled_dir: Path | None,
) -> RunResult:
    """Write a run's files as a registry version and/or the bundled model directory."""
    if write_registry:
        result.version_dir = registry.write(version, result.files)
    if bundled_dir is not None:
        result.bundled_dir = write_directory_atomically(bundled_dir, result.files)
    return result


def golden_rows(
    windows: WindowSet, proba: np.ndarray[Any, Any], columns: dict[int, int], per_class: int = 2
) -> Any:
    """A few test feature vectors: the highest-scoring windows of each class, and typical healthy ones."""
    picked: list[int] = []
    for cls, col in sorted(columns.items()):
        candidates = np.flatnonzero(windows.label == cls)
        if not len(candidates):
            continue
        order = candidates[np.argsort(-proba[candidates, col], kind="stable")]
        picked.extend(order[:per_class].tolist())
    if not picked:
        picked = list(range(min(len(windows), 6)))
    return windows.features[sorted(set(picked))]
