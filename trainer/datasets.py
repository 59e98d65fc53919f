"""The real-data benchmarks: AI4I 2020 (machine failure) and NASA C-MAPSS FD001 (remaining useful life).

``robotpm-train dataset ai4i`` and ``robotpm-train dataset cmapss`` read the files that
travel with the repository (``data/<set>/``, xz-compressed, each folder with a README
giving source and licence), train, evaluate, export ONNX with the same parity check as
every model, and register a version with its metrics and report. `read_data_file` reads a
file plain or, when only ``<name>.xz`` exists, decompressed.

- **AI4I 2020**: a random forest on the raw process values plus physics features
  (mechanical power = torque × angular speed, process − air temperature, tool wear ×
  torque) and the margins to the three failure rules the data set documents
  (overstrain, heat dissipation, power window), a stratified 80/20 split; the input
  set, leaf size and decision threshold are chosen by cross-validated F1 on the
  training part only.
- **C-MAPSS FD001**: rolling-window features of the informative sensors and the cycle
  counter, computed per engine with the agent's `batch_features` (the first cycles are
  padded with the mean of the engine's first readings so every cycle has a window), a
  RUL target capped at 125, five histogram gradient boostings (each on a random half of
  the features per split) averaged, extra trees in the average at a weight that may be
  zero; window, statistics and that weight chosen by cross-validation grouped by
  engine, scored at test-like end points (each validation engine cut at the official
  test engines' lengths, which are inputs); scored on the official test set at each
  engine's last cycle (RMSE and the PHM08 score). Its manifest is an agent manifest
  (task ``remaining_life``) with a lower-is-worse head.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.contract.features import FeatureSpec, Statistic, batch_features
from agent.contract.manifest import MANIFEST_FILE, MODEL_FILE, AlertHead, Thresholds
from trainer.config import TrainerConfig
from trainer.datafiles import DEFAULT_DATA, data_files_hash, read_data_text
from trainer.errors import DataError
from trainer.registry import METRICS_FILE, Registry
from trainer.robot_failures import run_robot_failures
from trainer.run import json_bytes, lineage
from trainer.stages.evaluation import regression_metrics
from trainer.stages.trained_model import TrainedMLModel
from trainer.stages.training import FittedModel

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]

AI4I_COLUMNS = (
    "Type",
    "Air temperature [K]",
    "Process temperature [K]",
    "Rotational speed [rpm]",
    "Torque [Nm]",
    "Tool wear [min]",
    "Machine failure",
)
AI4I_FEATURES = (
    "type_L",
    "type_M",
    "type_H",
    "air_temp_k",
    "process_temp_k",
    "speed_rpm",
    "torque_nm",
    "tool_wear_min",
    "power_w",
    "temp_difference_k",
    "wear_x_torque",
    "overstrain_margin",
    "heat_dissipation_margin",
    "power_margin",
)
_OVERSTRAIN_LIMIT = {"L": 11_000.0, "M": 12_000.0, "H": 13_000.0}
_HEAT_DIFFERENCE_K, _HEAT_SPEED_RPM = 8.6, 1380.0
_POWER_WINDOW_W = (3500.0, 9000.0)
AI4I_FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "all": AI4I_FEATURES,
    "rule_margins": (
        "type_L",
        "type_M",
        "type_H",
        "tool_wear_min",
        "overstrain_margin",
        "heat_dissipation_margin",
        "power_margin",
    ),
}
"""Candidate model inputs, chosen between by cross-validation on the training split."""
AI4I_LEAF_SIZES = (1, 3)
"""Candidate random-forest leaf sizes, chosen between by the same cross-validation."""

CMAPSS_SENSORS = (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21)
"""FD001 sensors that vary (s1, s5, s6, s10, s16, s18, s19 are constant or nearly)."""
RUL_CAP = 125.0
CMAPSS_EXTRA_TREES_SHARES = (0.0, 0.1, 0.2, 0.3)
"""Candidate weights of extra trees in the average with gradient boosting, chosen by grouped CV."""
CMAPSS_BOOSTING: dict[str, Any] = {
    "max_iter": 800,
    "learning_rate": 0.1,
    "max_leaf_nodes": 7,
    "min_samples_leaf": 40,
    "l2_regularization": 1.0,
    "max_features": 0.5,
}
"""One boosting's size, from an engine-grouped CV grid; each split sees a random half of the features."""
CMAPSS_BOOSTINGS = 5
"""Boostings averaged, seeds ``seed`` to ``seed + 4``: the feature sampling makes them differ."""
CMAPSS_PAD_READINGS = 10
"""The first cycles' windows are padded with the mean of this many first readings (one is noisy)."""


def run_dataset(
    name: str,
    config: TrainerConfig,
    *,
    data_dir: Path | None = None,
    registry_root: Path | None = None,
    seed: int = 7,
    report: bool = True,
) -> dict[str, Any]:
    """Run one benchmark; returns the summary (metrics, command, where the version was written)."""
    root = registry_root or config.registry
    if name == "ai4i":
        return run_ai4i(config, (data_dir or DEFAULT_DATA / "ai4i2020"), root, seed=seed, report=report)
    if name == "cmapss":
        return run_cmapss(config, (data_dir or DEFAULT_DATA / "cmapss_fd001"), root, seed=seed, report=report)
    if name == "robot-failures":
        directory = data_dir or DEFAULT_DATA / "robot_execution_failures"
        return run_robot_failures(config, directory, root, seed=seed, report=report)
    raise DataError(f"unknown dataset {name!r}; choose ai4i, cmapss or robot-failures")


# -- AI4I 2020 ---------------------------------------------------------------------------------


AI4I_MODES = ("TWF", "HDF", "PWF", "OSF", "RNF")


def load_ai4i_modes(path: Path) -> npt.NDArray[np.int64]:
    """The five failure-mode flags per row (never model inputs; used to explain recall)."""
    rows = list(csv.DictReader(io.StringIO(read_data_text(path), newline="")))
    return np.array([[int(r.get(m, "0") or 0) for m in AI4I_MODES] for r in rows], dtype=np.int64)


def load_ai4i(path: Path) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Physics features (`AI4I_FEATURES`) and the machine-failure label of every row."""
    reader = csv.DictReader(io.StringIO(read_data_text(path), newline=""))
    missing = [c for c in AI4I_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}")
    rows = list(reader)
    if not rows:
        raise DataError(f"{path}: no rows")
    try:
        kind = np.array([r["Type"].strip() for r in rows])
        air, process, rpm, torque, wear = (np.array([float(r[c]) for r in rows]) for c in AI4I_COLUMNS[1:6])
        label = np.array([int(r["Machine failure"]) for r in rows], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric value ({exc})") from None
    unknown = sorted(set(kind.tolist()) - set(_OVERSTRAIN_LIMIT))
    if unknown:
        raise DataError(f"{path}: column 'Type' has unknown values {unknown}")
    power = torque * rpm * 2.0 * np.pi / 60.0
    strain = wear * torque
    limit = np.array([_OVERSTRAIN_LIMIT[k] for k in kind.tolist()])
    difference = process - air
    features = np.column_stack(
        [
            kind == "L",
            kind == "M",
            kind == "H",
            air,
            process,
            rpm,
            torque,
            wear,
            power,
            difference,
            strain,
            strain - limit,
            heat_dissipation_margin(difference, rpm),
            np.minimum(power - _POWER_WINDOW_W[0], _POWER_WINDOW_W[1] - power),
        ]
    ).astype(np.float64)
    return features, label


def heat_dissipation_margin(difference: FloatArray, rpm: FloatArray) -> FloatArray:
    """How far a row is from the documented heat-dissipation rule (negative: the rule holds).

    The rule holds when the process-air difference is below 8.6 K and the speed below
    1380 rpm, so the margin is the larger of the two distances (speed in hundreds of rpm).
    The temperatures have 0.1 K resolution, and a difference that reads 8.6 K lands a few
    1e-14 either side of the limit in floating point (the data set's flags follow that
    comparison exactly); trees cannot split values 1e-7 apart, so the temperature distance
    is kept at least half a resolution step (0.05 K) from zero, on the side it falls.
    """
    below = difference < _HEAT_DIFFERENCE_K
    distance = difference - _HEAT_DIFFERENCE_K
    distance = np.where(below, np.minimum(distance, -0.05), np.maximum(distance, 0.05))
    return np.maximum(distance, (rpm - _HEAT_SPEED_RPM) / 100.0)


def run_ai4i(
    config: TrainerConfig,
    data_dir: Path,
    registry_root: Path,
    *,
    seed: int,
    report: bool,
    folds: int = 5,
    candidates: Sequence[tuple[str, int]] | None = None,
) -> dict[str, Any]:
    """AI4I 2020: stratified 80/20, a random forest on physics and rule-margin features, F1 at a CV threshold.

    Inputs (`AI4I_FEATURE_SETS`) and leaf size (`AI4I_LEAF_SIZES`) are the candidate with the
    best out-of-fold F1 on the training split (stratified `folds`-fold CV); the threshold is
    that candidate's best out-of-fold F1 threshold. The test split is scored once, at the end.
    """
    from sklearn.metrics import (
        average_precision_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split

    path = data_dir / "ai4i2020.csv"
    features, label = load_ai4i(path)
    index_train, index_test = train_test_split(
        np.arange(len(label)), test_size=0.2, stratify=label, random_state=seed
    )
    y_train, y_test = label[index_train], label[index_test]
    if candidates is None:
        candidates = [(name, leaf) for name in AI4I_FEATURE_SETS for leaf in AI4I_LEAF_SIZES]
    ranking: list[tuple[float, float, str, int]] = []
    for name, leaf in candidates:
        x_train = _ai4i_columns(features[index_train], name).astype(np.float32)
        oof = cross_val_predict(
            _ai4i_forest(leaf, seed),
            x_train,
            y_train,
            cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
            method="predict_proba",
        )[:, 1]
        threshold = best_f1_threshold(y_train, oof)
        ranking.append((float(f1_score(y_train, oof >= threshold)), threshold, name, leaf))
    ranking.sort(key=lambda r: -r[0])
    cv_f1, threshold, feature_set, leaf = ranking[0]
    columns = AI4I_FEATURE_SETS[feature_set]
    x_train = _ai4i_columns(features[index_train], feature_set).astype(np.float32)
    x_test = _ai4i_columns(features[index_test], feature_set).astype(np.float32)
    model = _ai4i_forest(leaf, seed).fit(x_train, y_train)
    fitted = FittedModel(model, "random_forest", "classifier", len(columns), (0, 1))
    exported = TrainedMLModel(config.parity).export(fitted, x_test.astype(np.float64))
    score = model.predict_proba(x_test)[:, 1]
    predicted = (score >= threshold).astype(int)
    metrics = {
        "f1": float(f1_score(y_test, predicted)),
        "precision": float(precision_score(y_test, predicted)),
        "recall": float(recall_score(y_test, predicted)),
        "pr_auc": float(average_precision_score(y_test, score)),
        "roc_auc": float(roc_auc_score(y_test, score)),
        "f1_at_0.5": float(f1_score(y_test, (score >= 0.5).astype(int))),
        "threshold": threshold,
        "cv_f1": cv_f1,
        "test_rows": float(len(y_test)),
        "test_failures": float(y_test.sum()),
        "parity_max_abs_diff": exported.max_abs_diff,
    }
    modes = load_ai4i_modes(path)[index_test]
    for i, mode in enumerate(AI4I_MODES):
        failing = (modes[:, i] == 1) & (y_test == 1)
        metrics[f"recall_{mode}"] = float(predicted[failing].mean()) if failing.any() else float("nan")
        metrics[f"failures_{mode}"] = float(failing.sum())
    card = {
        "dataset": "AI4I 2020 (UCI 601), synthetic",
        "task": "machine failure within the process (binary)",
        "split": f"stratified 80/20, random_state={seed}",
        "estimator": f"RandomForestClassifier(n_estimators={AI4I_TREES}, min_samples_leaf={leaf})",
        "selection": [[round(f, 4), name, leaf] for f, _, name, leaf in ranking],
        "input": {"name": "features", "dtype": "float32", "columns": list(columns)},
        "output": {"name": "probabilities", "column": 1, "threshold": threshold},
        "data_hash": data_files_hash(path),
        "command": f"robotpm-train dataset ai4i --seed {seed}",
    }
    files: dict[str, bytes] = {
        MODEL_FILE: exported.onnx_bytes,
        "card.json": json_bytes(card),
        METRICS_FILE: json_bytes({"metrics": metrics, "parity": {"max_abs_diff": exported.max_abs_diff}}),
    }
    if report:
        from trainer.report import binary_report

        files.update(
            binary_report("AI4I 2020: machine failure", y_test, score, threshold, {**card, **metrics})
        )
    registry = Registry(registry_root, "ai4i-2020")
    version = registry.next_version()
    where = registry.write(version, files)
    return {
        "dataset": "ai4i",
        "version_dir": str(where),
        "metrics": metrics,
        "command": card["command"],
        "selected": {"features": feature_set, "min_samples_leaf": leaf},
    }


AI4I_TREES = 200


def _ai4i_forest(leaf: int, seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=AI4I_TREES, min_samples_leaf=leaf, n_jobs=1, random_state=seed)


def _ai4i_columns(features: FloatArray, feature_set: str) -> FloatArray:
    try:
        names = AI4I_FEATURE_SETS[feature_set]
    except KeyError:
        known = sorted(AI4I_FEATURE_SETS)
        raise DataError(f"unknown AI4I feature set {feature_set!r}; have {known}") from None
    return features[:, [AI4I_FEATURES.index(n) for n in names]]


def best_f1_threshold(labels: npt.NDArray[np.int64], scores: FloatArray) -> float:
    """The score threshold with the best F1 on (out-of-fold) training scores."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


# -- C-MAPSS FD001 -----------------------------------------------------------------------------


def load_cmapss(path: Path) -> FloatArray:
    """The whitespace-separated table (unit, cycle, 3 settings, 21 sensors)."""
    try:
        table = np.loadtxt(io.StringIO(read_data_text(path)), ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: not a C-MAPSS table ({exc})") from None
    if table.shape[1] != 26 or not len(table):
        raise DataError(f"{path}: expected 26 columns, got {table.shape[1]} (or no rows)")
    return table


def cmapss_channels() -> tuple[str, ...]:
    """Canonical channels of the C-MAPSS model: the cycle counter and the informative sensors."""
    return ("cycle", *(f"s{s}" for s in CMAPSS_SENSORS))


def cmapss_windows(table: FloatArray, spec: FeatureSpec) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(features, unit, cycle) of one window ending at every cycle of every engine (start padded).

    The ``window - 1`` padding rows before an engine's first cycle hold the mean of its first
    `CMAPSS_PAD_READINGS` sensor readings, and its first cycle number: a single first reading
    would weigh on every early window with its whole noise.
    """
    columns = [1, *(4 + s for s in CMAPSS_SENSORS)]
    parts: list[FloatArray] = []
    units: list[FloatArray] = []
    cycles: list[FloatArray] = []
    for unit in np.unique(table[:, 0]):
        rows = table[table[:, 0] == unit][:, columns]
        pad = rows[:CMAPSS_PAD_READINGS].mean(axis=0)
        pad[0] = rows[0, 0]
        padded = np.vstack([np.repeat(pad[None, :], spec.window - 1, axis=0), rows])
        features, _ = batch_features(padded, spec)
        parts.append(features)
        units.append(np.full(len(features), unit))
        cycles.append(rows[:, 0])
    return np.vstack(parts), np.concatenate(units), np.concatenate(cycles)


def run_cmapss(
    config: TrainerConfig,
    data_dir: Path,
    registry_root: Path,
    *,
    seed: int,
    report: bool,
    candidates: Sequence[tuple[int, tuple[Statistic, ...]]] | None = None,
    shares: Sequence[float] = CMAPSS_EXTRA_TREES_SHARES,
) -> dict[str, Any]:
    """C-MAPSS FD001: CV-chosen window features and blend of boosting and extra trees, official truth.

    Every (window, statistics) candidate is cross-validated by engine once per model family;
    each extra-trees share in `shares` is then a weighted average of those out-of-fold
    predictions, so the blend costs no further fits. Candidates are ranked by the RMSE
    against the capped target at test-like end points (`cmapss_end_points`: every
    validation engine cut at each official test engine's length, an input); the RMSE over
    all windows is recorded beside it. The test truth is read only to score the one
    selected configuration.
    """
    from threadpoolctl import threadpool_limits

    train_path, test_path, truth_path = (
        data_dir / "train_FD001.txt",
        data_dir / "test_FD001.txt",
        data_dir / "RUL_FD001.txt",
    )
    train, test = load_cmapss(train_path), load_cmapss(test_path)
    truth = np.loadtxt(io.StringIO(read_data_text(truth_path)), ndmin=1)
    if len(truth) != len(np.unique(test[:, 0])):
        raise DataError(
            f"{truth_path}: {len(truth)} RUL values for {len(np.unique(test[:, 0]))} test engines"
        )
    test_lengths = np.array([np.sum(test[:, 0] == u) for u in np.unique(test[:, 0])])
    with threadpool_limits(1):  # OpenMP spinning on a busy 2-core machine costs more than it gives
        ranking = cmapss_selection(train, test_lengths, seed=seed, candidates=candidates, shares=shares)
        cv_rmse, cv_rmse_all, window, stats, share = ranking[0]
        spec = FeatureSpec(channels=cmapss_channels(), window=window, hop=1, statistics=stats)
        x, unit, cycle = cmapss_windows(train, spec)
        target = _capped_rul(train, unit, cycle)
        model = _cmapss_model(share, seed).fit(x.astype(np.float32), target)
        x_test, unit_test, cycle_test = cmapss_windows(test, spec)
        last = np.array([np.flatnonzero(unit_test == u)[-1] for u in np.unique(unit_test)])
        fitted = FittedModel(model, "hist_gradient_boosting", "regressor", x.shape[1])
        exported = TrainedMLModel(config.parity).export(fitted, x_test)
        predicted = model.predict(x_test[last].astype(np.float32))
    metrics = regression_metrics(truth, predicted)
    metrics.update(
        cv_rmse=cv_rmse,
        cv_rmse_all_windows=cv_rmse_all,
        window=float(window),
        extra_trees_share=share,
        parity_max_abs_diff=exported.max_abs_diff,
    )
    registry = Registry(registry_root, "cmapss-fd001")
    version = registry.next_version()
    record = lineage(
        data_files_hash(train_path, test_path, truth_path),
        type(model).__name__,
        rul_cap=str(RUL_CAP),
        selection=json.dumps([[round(r, 3), round(a, 3), w, list(s), b] for r, a, w, s, b in ranking]),
    )
    head = AlertHead(
        output=exported.score_output,
        column=0,
        component="hpc",
        failure_mode="hpc_degradation",
        meaning=f"remaining useful life in cycles (capped at {RUL_CAP:g})",
        direction="lower_is_worse",
        thresholds=Thresholds(warning=30.0, critical=15.0, clear=40.0),
    )
    manifest = TrainedMLModel.manifest(
        model_id="cmapss-fd001",
        version=version,
        task="remaining_life",
        spec=spec,
        exported=exported,
        heads=[head],
        train_features=x,
        golden_features=x_test[last[:6]],
        metrics=metrics,
        lineage=record,
        created=datetime.now(timezone.utc),
    )
    command = f"robotpm-train dataset cmapss --seed {seed}"
    files: dict[str, bytes] = {
        MODEL_FILE: exported.onnx_bytes,
        MANIFEST_FILE: manifest.to_json().encode(),
        METRICS_FILE: json_bytes({"metrics": metrics, "command": command, "lineage": record}),
    }
    if report:
        from trainer.report import regression_report

        all_predicted = model.predict(x_test.astype(np.float32))
        # true RUL of every test window: the engine's RUL at its last cycle plus the cycles still to go
        last_cycle = {u: cycle_test[unit_test == u].max() for u in np.unique(unit_test)}
        truth_by_unit = dict(zip(np.unique(unit_test).tolist(), truth.tolist(), strict=True))
        actual = np.array(
            [truth_by_unit[u] + last_cycle[u] - c for u, c in zip(unit_test, cycle_test, strict=True)]
        )
        files.update(
            regression_report(
                "C-MAPSS FD001: remaining useful life",
                np.minimum(actual, RUL_CAP),
                all_predicted,
                unit_test.astype(int),
                cycle_test,
                {"metrics": metrics, "command": command, "lineage": record},
            )
        )
    where = registry.write(version, files)
    return {
        "dataset": "cmapss",
        "version_dir": str(where),
        "metrics": metrics,
        "command": command,
        "selected": {
            "window": window,
            "statistics": list(stats),
            "extra_trees_share": share,
            "boostings": CMAPSS_BOOSTINGS,
        },
    }


CmapssCandidate = tuple[float, float, int, tuple[Statistic, ...], float]
"""One cross-validated C-MAPSS candidate: (end-point RMSE, all-window RMSE, window, statistics, share)."""


def cmapss_selection(
    train: FloatArray,
    test_lengths: npt.NDArray[np.int64],
    *,
    seed: int,
    candidates: Sequence[tuple[int, tuple[Statistic, ...]]] | None = None,
    shares: Sequence[float] = CMAPSS_EXTRA_TREES_SHARES,
) -> list[CmapssCandidate]:
    """Every candidate cross-validated on the training engines only, best (lowest end-point RMSE) first.

    A candidate is a (window, statistics) pair and an extra-trees share; the RMSE is against the
    capped target at `cmapss_end_points` of the official `test_lengths` (inputs, not truth).
    No test truth is read here.
    """
    if candidates is None:
        candidates = [
            (window, stats)
            for window in (60, 70, 80)
            for stats in (("mean", "slope"), ("mean", "slope", "last"))
        ]
    ranking: list[CmapssCandidate] = []
    for window, stats in candidates:
        spec = FeatureSpec(channels=cmapss_channels(), window=window, hop=1, statistics=stats)
        x, unit, cycle = cmapss_windows(train, spec)
        target = _capped_rul(train, unit, cycle)
        ends = cmapss_end_points(unit, cycle, test_lengths)
        boosted = _grouped_cv_predictions(lambda: _cmapss_model(0.0, seed), x, target, unit)
        trees = (
            _grouped_cv_predictions(lambda: _cmapss_extra_trees(seed), x, target, unit)
            if any(share > 0 for share in shares)
            else boosted
        )
        for share in shares:
            error = (1.0 - share) * boosted + share * trees - target
            at_ends, everywhere = np.sqrt(np.mean(error[ends] ** 2)), np.sqrt(np.mean(error**2))
            ranking.append((float(at_ends), float(everywhere), window, stats, share))
    ranking.sort(key=lambda r: r[0])
    return ranking


def cmapss_end_points(unit: FloatArray, cycle: FloatArray, lengths: npt.NDArray[np.int64]) -> IndexArray:
    """Indices of test-like end points: each engine's window at every length shorter than its life.

    The official test engines stop at the lengths `lengths` (inputs, not truth); cutting every
    training engine at each of them that it outlives (a length shared by several test engines
    counts as often) scores a cross-validation where the test does. Cycles ascend within an engine.
    """
    ends: list[IndexArray] = []
    for u in np.unique(unit):
        rows = np.flatnonzero(unit == u)
        cuts = lengths[lengths < cycle[rows].max()]
        ends.append(rows[np.searchsorted(cycle[rows], cuts)])
    return np.concatenate(ends)


def _capped_rul(table: FloatArray, unit: FloatArray, cycle: FloatArray) -> FloatArray:
    life = {u: table[table[:, 0] == u][:, 1].max() for u in np.unique(table[:, 0])}
    return np.minimum(np.array([life[u] for u in unit.tolist()]) - cycle, RUL_CAP)


def _cmapss_boosting(seed: int) -> Any:
    """Gradient boosting with a fixed number of rounds, without its built-in early stopping.

    That stopping holds out random windows whose engines' other windows are in training,
    so it cannot judge when to stop.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(**CMAPSS_BOOSTING, early_stopping=False, random_state=seed)


def _cmapss_extra_trees(seed: int) -> Any:
    from sklearn.ensemble import ExtraTreesRegressor

    return ExtraTreesRegressor(
        n_estimators=60, min_samples_leaf=10, max_features=0.5, random_state=seed, n_jobs=1
    )


def _cmapss_model(share: float, seed: int) -> Any:
    """The boostings' mean, or its weighted average with extra trees (`share` the trees' weight)."""
    from sklearn.ensemble import VotingRegressor

    members = [(f"boosting_{k}", _cmapss_boosting(seed + k)) for k in range(CMAPSS_BOOSTINGS)]
    weights = [(1.0 - share) / CMAPSS_BOOSTINGS] * CMAPSS_BOOSTINGS
    if share > 0:
        members.append(("extra_trees", _cmapss_extra_trees(seed)))
        weights.append(share)
    # skl2onnx's VotingRegressor converter needs the weights as an array
    return VotingRegressor(members, weights=np.array(weights))


def _grouped_cv_predictions(make_model: Any, x: FloatArray, y: FloatArray, groups: FloatArray) -> FloatArray:
    """Out-of-fold predictions of a 3-fold cross-validation grouped by engine."""
    from sklearn.model_selection import GroupKFold

    predicted = np.empty(len(y))
    for train_idx, val_idx in GroupKFold(n_splits=3).split(x, y, groups):
        model = make_model().fit(x[train_idx].astype(np.float32), y[train_idx])
        predicted[val_idx] = model.predict(x[val_idx].astype(np.float32))
    return predicted
