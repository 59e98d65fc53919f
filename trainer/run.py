"""The run scaffold every task shares: windows in, one registered model version out.

A task (`trainer.tasks`) says only what differs: which windows it needs and how it fits,
calibrates and evaluates on them (`TaskSteps.fit` returning a `TaskFit`). `run_task` does
the rest in the same order for every task:

1. DataExtractionAnalysis and DataPreparation of both sources (`prepare_windows`), timed;
2. the task's own fit, calibration and evaluation;
3. TrainedMLModel: ONNX export with the parity check on the test windows;
4. the lineage record, the manifest, ``metrics.json``, the config, data snapshot, profile
   and quarantine (`version_files`), the report when asked;
5. the registry version and/or the bundled model directory, written only after every
   step above succeeded (`store_run`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
from typing_extensions import Unpack

from agent.contract.features import FeatureSpec
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, AlertHead, ModelManifest, Task
from agent.contract.sampling import measure_intervals
from trainer.config import TrainerConfig
from trainer.registry import METRICS_FILE, Registry, write_directory_atomically
from trainer.stages.evaluation import Evaluation
from trainer.stages.extraction import DataExtractionAnalysis, Dataset
from trainer.stages.preparation import DataPreparation, WindowSet, label_classes
from trainer.stages.trained_model import ExportedModel, TrainedMLModel
from trainer.stages.training import FittedModel

FloatArray = npt.NDArray[np.float64]


@dataclass(slots=True)
class RunResult:
    """What one run produced."""

    manifest: ModelManifest
    exported: ExportedModel
    evaluation: Evaluation
    fitted: FittedModel
    test: WindowSet
    test_proba: np.ndarray[Any, Any]
    """The model's score output on the test windows, shape (windows, columns)."""
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


def lineage(
    data_hash: str, estimator: str, *, config: TrainerConfig | None = None, **extra: str
) -> dict[str, str]:
    """The lineage record of a model: data version, code version, estimator, and the config when given."""
    record = {"data_hash": data_hash, "code_version": code_version(), "estimator": estimator}
    if config is not None:
        record.update(config_hash=config_hash(config), seed=str(config.seed))
    record.update(extra)
    return record


def json_bytes(data: Any) -> bytes:
    """Indented JSON with a final newline: how every JSON file of a model version is written."""
    return (json.dumps(data, indent=2, default=_json_default) + "\n").encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (tuple, np.ndarray)):
        return list(value)
    raise TypeError(type(value).__name__)


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
    extraction = DataExtractionAnalysis.for_config(config)
    train_data = (
        train if isinstance(train, Dataset) else timer.run("extract", lambda: extraction.extract(train))
    )
    test_data = test if isinstance(test, Dataset) else timer.run("extract", lambda: extraction.extract(test))
    spec = config.features.spec(config.canonical_channels, training_rate(config, train_data))
    preparation = DataPreparation.for_config(spec, config, label_classes(train_data, test_data))
    train_windows: WindowSet = timer.run(
        "prepare", lambda: preparation.windows(train_data, require_truth=require_truth)
    )
    test_windows: WindowSet = timer.run(
        "prepare", lambda: preparation.windows(test_data, require_truth=require_truth)
    )
    return PreparedData(spec, train_data, test_data, train_windows, test_windows)


def training_rate(config: TrainerConfig, data: Dataset) -> float | None:
    """The rate the windows are cut at: ``features.resample_hz``, else the training data's measured rate."""
    if config.features.resample_hz is not None:
        return config.features.resample_hz
    intervals = [np.diff(series.timestamps) for series in data.series if len(series) > 1]
    if not intervals:
        return None
    rate = measure_intervals(np.concatenate(intervals)).rate_hz  # every robot's intervals, pooled
    return float(f"{rate:.6g}") if np.isfinite(rate) else None  # 6 digits: not the timestamps' rounding


def projection_matrix(config: TrainerConfig, spec: FeatureSpec) -> FloatArray | None:
    """The fixed contrast projection in front of the estimator, when ``trainer.model.projection`` is on."""
    if not config.model.projection:
        return None
    from trainer.stages.projection import contrast_matrix

    return contrast_matrix(spec.feature_names())[0]


ReportMaker = Callable[[RunResult], dict[str, bytes]]


@dataclass(slots=True)
class TaskFit:
    """What a task's own steps produced: the model, its test scores and evaluation, its heads."""

    fitted: FittedModel
    test_scores: np.ndarray[Any, Any]
    """The model's score output on the test windows, shape (windows, columns)."""
    evaluation: Evaluation
    heads: Callable[[str], Sequence[AlertHead]]
    """The alert heads, given the name of the ONNX output that holds the scores."""
    reference_features: FloatArray
    """The windows the manifest's reference statistics describe (what the model was fitted on)."""
    golden_features: FloatArray
    estimator: str
    score_names: tuple[str, ...]
    """A name for each column of `test_scores` (the columns of ``scores.csv``)."""
    metrics_doc: dict[str, Any] = field(default_factory=dict)
    """Entries of ``metrics.json`` beyond the evaluation (e.g. the thresholds)."""
    lineage: dict[str, str] = field(default_factory=dict)
    """Lineage entries of this task beyond the common ones."""
    report: ReportMaker | None = None


@dataclass(frozen=True, slots=True)
class TaskSteps:
    """What a task is: its manifest task, its default model name suffix and its own fit."""

    task: Task
    name_suffix: str
    require_truth: bool
    fit: Callable[[TrainerConfig, PreparedData, StageTimer], TaskFit]

    def train(
        self,
        config: TrainerConfig,
        train: Path | Dataset,
        test: Path | Dataset,
        **options: Unpack[RunOptions],
    ) -> RunResult:
        """Run this task on `train` and `test` (log paths or extracted data sets); see `run_task`."""
        return run_task(self, config, train, test, **options)


def one_head(**fields: Any) -> Callable[[str], Sequence[AlertHead]]:
    """The heads of a one-score model: column 0 of the score output, with these `AlertHead` fields."""
    return lambda output: [AlertHead(output=output, column=0, **fields)]


def extreme_rows(features: FloatArray, score: npt.NDArray[Any], per_end: int = 3) -> FloatArray:
    """The feature rows of the `per_end` highest and lowest scores (golden vectors of a one-score model)."""
    order = np.argsort(-np.asarray(score), kind="stable")
    return features[np.unique(np.concatenate([order[:per_end], order[-per_end:]]))]


class RunOptions(TypedDict, total=False):
    """Where a run writes: the keyword arguments every task function takes."""

    registry_root: Path | None
    """Registry root (default: ``trainer.registry``)."""
    name: str | None
    """Model name (default: ``trainer.model_name`` plus the task's suffix)."""
    bundled_dir: Path | None
    """Also write the model directory here (the bundled model)."""
    write_registry: bool
    """Register a version (default True)."""
    report: bool
    """Draw the plots and the PDF report (default False)."""


def run_task(
    steps: TaskSteps,
    config: TrainerConfig,
    train: Path | Dataset,
    test: Path | Dataset,
    *,
    registry_root: Path | None = None,
    name: str | None = None,
    bundled_dir: Path | None = None,
    write_registry: bool = True,
    report: bool = False,
) -> RunResult:
    """Prepare, fit (the task's steps), export with parity, build the manifest and store; see the module."""
    timer = StageTimer()
    prepared = prepare_windows(config, train, test, timer, require_truth=steps.require_truth)
    fit = steps.fit(config, prepared, timer)
    test_windows = prepared.test_windows
    exported: ExportedModel = timer.run(
        "export", lambda: TrainedMLModel(config.parity).export(fit.fitted, test_windows.features)
    )
    model_name = name or f"{config.model_name}{steps.name_suffix}"
    registry = Registry(registry_root or config.registry, model_name)
    version = registry.next_version()
    train_data, test_data = prepared.train_data, prepared.test_data
    record = lineage(
        hashlib.sha256(f"{train_data.data_hash}:{test_data.data_hash}".encode()).hexdigest(),
        fit.estimator,
        config=config,
        train_data_hash=train_data.data_hash,
        test_data_hash=test_data.data_hash,
        **fit.lineage,
    )
    metrics = dict(fit.evaluation.metrics)
    metrics["parity_max_abs_diff"] = exported.max_abs_diff
    metrics["model_bytes"] = float(len(exported.onnx_bytes))
    manifest = TrainedMLModel.manifest(
        model_id=model_name,
        version=version,
        task=steps.task,
        spec=prepared.spec,
        exported=exported,
        heads=fit.heads(exported.score_output),
        train_features=fit.reference_features,
        healthy_features=prepared.train_windows.features[prepared.train_windows.healthy],
        golden_features=fit.golden_features,
        metrics=metrics,
        lineage=record,
    )
    metrics_doc = {
        **fit.evaluation.to_json(),
        **fit.metrics_doc,
        "parity": {"max_abs_diff": exported.max_abs_diff, "mismatch_fraction": exported.mismatch_fraction},
        "timings_s": timer.timings,
        "lineage": record,
    }
    profile = {"train": train_data.profile(), "test": test_data.profile()}
    files = version_files(manifest, exported, metrics_doc, config, train_data, test_data)
    files["profile.json"] = json_bytes(profile)
    files[SCORES_FILE] = scores_csv(test_windows, fit.test_scores, fit.score_names)
    if fit.evaluation.events:
        files[EVENTS_FILE] = events_csv(fit.evaluation.events)
    result = RunResult(
        manifest,
        exported,
        fit.evaluation,
        fit.fitted,
        test_windows,
        fit.test_scores,
        profile=profile,
        test_data=test_data,
    )
    if report and fit.report is not None:
        make_report = fit.report
        files.update(timer.run("report", lambda: make_report(result)))
    result.timings = timer.timings
    result.files = files
    return store_run(result, registry, version, write_registry=write_registry, bundled_dir=bundled_dir)


SCORES_FILE = "scores.csv"
"""Per test window: where and when it ended, its label, and every score the model gave it."""
EVENTS_FILE = "events.csv"
"""The per-event table of the evaluation (`trainer.stages.evaluation.event_table`)."""


def scores_csv(windows: WindowSet, scores: np.ndarray[Any, Any], names: Sequence[str]) -> bytes:
    """``scores.csv``: robot, end_ts, label (class index), class, mode, rul_s and one column per score.

    Every test figure in ``metrics.json`` can be recomputed from this file and the classes.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["robot", "end_ts", "label", "class", "mode", "rul_s", *names])
    matrix = np.asarray(scores, dtype=np.float64).reshape(len(windows), -1)
    for i in range(len(windows)):
        writer.writerow(
            [
                windows.robot[i],
                repr(float(windows.end_ts[i])),
                int(windows.label[i]),
                windows.classes[int(windows.label[i])],
                windows.mode[i],
                repr(float(windows.rul_s[i])),
                *(repr(float(v)) for v in matrix[i]),
            ]
        )
    return buffer.getvalue().encode()


def events_csv(rows: Sequence[dict[str, Any]]) -> bytes:
    """The per-event table as CSV (empty cells where a value does not apply)."""
    buffer = io.StringIO()
    columns = ["robot", "onset", "mode", "detected", "lead_time_s", "first_head", "false_alarms"]
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue().encode()


def version_files(
    manifest: ModelManifest,
    exported: ExportedModel,
    metrics_doc: dict[str, Any],
    config: TrainerConfig,
    train_data: Dataset,
    test_data: Dataset,
) -> dict[str, bytes]:
    """The files every model version holds: model, manifest, metrics, the config and the data snapshot.

    ``quarantine.csv`` joins them when either data set had rows refused.
    """
    files = {
        MODEL_FILE: exported.onnx_bytes,
        MANIFEST_FILE: manifest.to_json().encode(),
        METRICS_FILE: json_bytes(metrics_doc),
        "config.json": json_bytes(config.model_dump(mode="json")),
        "snapshot.json": json_bytes({"train": train_data.snapshot(), "test": test_data.snapshot()}),
    }
    if train_data.quarantine or test_data.quarantine:
        files["quarantine.csv"] = train_data.quarantine_csv() + test_data.quarantine_csv().split(b"\n", 1)[1]
    return files


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
