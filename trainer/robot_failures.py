"""The UCI Robot Execution Failures set as a worked example: real force/torque traces to an agent model.

``robotpm-train dataset robot-failures`` reads ``data/robot_execution_failures/lp1 … lp5``
(each instance: a class name, then 15 samples of Fx Fy Fz Tx Ty Tz), cuts each instance
into one window of the agent's own features (`agent.contract.features`, window 15: the
whole trace), and for each of the five learning problems:

- measures a random forest by stratified 5-fold cross-validation repeated 3 times (fewer
  folds where a class has fewer than 5 instances: lp3 has 3 ``lost``)
  (accuracy, macro F1, and the recall of "something failed" against the normal class);
- fits it on every instance, exports it to ONNX with the parity check, and registers it as
  ``uci-robot-failures-lpN`` with an agent manifest: one head per failure class, its
  warning threshold calibrated on the out-of-fold scores of the normal instances.

The set is tiny (463 instances in all) and old (1999): it shows the path from a real
robot's traces to an agent model, not field accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract.features import FeatureSpec, batch_features
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, AlertHead
from trainer.config import TrainerConfig
from trainer.datafiles import data_files_hash, read_data_text
from trainer.errors import DataError
from trainer.registry import METRICS_FILE, Registry
from trainer.run import json_bytes, lineage
from trainer.stages.evaluation import calibrate
from trainer.stages.trained_model import TrainedMLModel
from trainer.stages.training import FittedModel

FloatArray = npt.NDArray[np.float64]

CHANNELS = ("fx", "fy", "fz", "tx", "ty", "tz")
SAMPLES = 15
PROBLEMS = {
    "lp1": "failures in approach to grasp position",
    "lp2": "failures in transfer of a part",
    "lp3": "position of part after a transfer failure",
    "lp4": "failures in approach to ungrasp position",
    "lp5": "failures in motion with part",
}
NORMAL = ("normal", "ok")
"""The class names that mean "nothing failed" (lp3 calls it ``ok``)."""
SPEC = FeatureSpec(
    channels=CHANNELS, window=SAMPLES, hop=SAMPLES, statistics=("mean", "std", "min", "max", "slope", "last")
)


def load_problem(path: Path) -> tuple[FloatArray, list[str]]:
    """The traces (instances × 15 × 6) and class names of one ``lpN.data`` file."""
    traces: list[list[list[float]]] = []
    names: list[str] = []
    for number, line in enumerate(read_data_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 1 and not _is_number(fields[0]):
            names.append(fields[0])
            traces.append([])
            continue
        if not traces or len(fields) != len(CHANNELS):
            raise DataError(f"{path}:{number}: expected a class name or {len(CHANNELS)} numbers")
        traces[-1].append([float(v) for v in fields])
    short = [i for i, trace in enumerate(traces) if len(trace) != SAMPLES]
    if short or not traces:
        raise DataError(f"{path}: instances {short[:5]} do not hold {SAMPLES} samples (or none found)")
    return np.array(traces, dtype=np.float64), names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def instance_features(traces: FloatArray) -> FloatArray:
    """One row of the agent's features per instance (the whole 15-sample trace is the window)."""
    return np.vstack([batch_features(trace, SPEC)[0] for trace in traces])


def run_robot_failures(
    config: TrainerConfig,
    data_dir: Path,
    registry_root: Path,
    *,
    seed: int,
    report: bool = False,
    problems: tuple[str, ...] = tuple(PROBLEMS),
) -> dict[str, Any]:
    """Cross-validate, fit, export and register one model per learning problem; returns the summary.

    `report` is accepted for the common `run_dataset` signature; this example draws no plots.
    """
    results: dict[str, Any] = {}
    for problem in problems:
        results[problem] = _run_problem(config, data_dir / f"{problem}.data", problem, registry_root, seed)
    command = f"robotpm-train dataset robot-failures --seed {seed}"
    total = sum(r["metrics"]["instances"] for r in results.values())
    mean_f1 = float(np.mean([r["metrics"]["f1_macro"] for r in results.values()]))
    return {
        "dataset": "robot-failures",
        "command": command,
        "metrics": {"instances": total, "f1_macro_mean": mean_f1},
        "problems": results,
    }


def _run_problem(
    config: TrainerConfig, path: Path, problem: str, registry_root: Path, seed: int
) -> dict[str, Any]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import RepeatedStratifiedKFold

    traces, names = load_problem(path)
    features = instance_features(traces)
    classes = sorted(set(names), key=lambda c: (c not in NORMAL, c))
    label = np.array([classes.index(n) for n in names], dtype=np.int64)

    def make() -> Any:
        return RandomForestClassifier(
            n_estimators=200, min_samples_leaf=1, class_weight="balanced", random_state=seed
        )

    x32 = features.astype(np.float32)
    smallest = int(np.bincount(label).min())
    folds = RepeatedStratifiedKFold(n_splits=max(2, min(5, smallest)), n_repeats=3, random_state=seed)
    predicted: list[npt.NDArray[np.int64]] = []
    truth: list[npt.NDArray[np.int64]] = []
    oof_cols: dict[int, list[FloatArray]] = {c: [] for c in range(1, len(classes))}
    for train_idx, val_idx in folds.split(x32, label):
        model = make().fit(x32[train_idx], label[train_idx])
        proba = np.zeros((len(val_idx), len(classes)))
        proba[:, model.classes_] = model.predict_proba(x32[val_idx])
        predicted.append(proba.argmax(axis=1))
        truth.append(label[val_idx])
        normal = label[val_idx] == 0
        for c in oof_cols:
            oof_cols[c].append(proba[normal, c])
    y_true, y_pred = np.concatenate(truth), np.concatenate(predicted)
    failed_true, failed_pred = y_true > 0, y_pred > 0
    metrics = {
        "instances": float(len(label)),
        "classes": float(len(classes)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro")),
        "failure_recall": float(failed_pred[failed_true].mean()),
        "normal_false_alarm_rate": float(failed_pred[~failed_true].mean()),
    }
    model = make().fit(x32, label)
    fitted = FittedModel(
        model, "random_forest", "classifier", features.shape[1], tuple(int(c) for c in model.classes_)
    )
    exported = TrainedMLModel(config.parity).export(fitted, features)
    floors = config.thresholds
    heads = [
        AlertHead(
            output=exported.score_output,
            column=column,
            component="gripper" if problem in ("lp1", "lp4") else "arm",
            failure_mode=classes[cls],
            meaning=f"probability of {classes[cls]} ({PROBLEMS[problem]}), from 315 ms of wrist force/torque",
            thresholds=calibrate(np.concatenate(oof_cols[cls]), floors),
        )
        for column, cls in enumerate(fitted.classes)
        if cls != 0
    ]
    name = f"uci-robot-failures-{problem}"
    registry = Registry(registry_root, name)
    version = registry.next_version()
    record = lineage(data_files_hash(path), "RandomForestClassifier", problem=problem, seed=str(seed))
    manifest = TrainedMLModel.manifest(
        model_id=name,
        version=version,
        task="failure_classifier",
        spec=SPEC,
        exported=exported,
        heads=heads,
        train_features=features,
        golden_features=features[:: max(1, len(features) // 6)][:6],
        metrics=metrics,
        lineage=record,
    )
    where = registry.write(
        version,
        {
            MODEL_FILE: exported.onnx_bytes,
            MANIFEST_FILE: manifest.to_json().encode(),
            METRICS_FILE: json_bytes({"metrics": metrics, "classes": classes, "lineage": record}),
        },
    )
    return {"version_dir": str(where), "classes": classes, "metrics": metrics}
