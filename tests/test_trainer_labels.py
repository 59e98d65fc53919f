"""Labels by configuration: a stop-flag column or the controller's event log, every unused row shown."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score

from agent.contract.manifest import ModelManifest
from tests.fleets import cobot_export, small_fleet
from tests.trainer_configs import trainer_toml
from trainer import cli
from trainer.config import FlagLabels
from trainer.labels import flag_events

LABELS = trainer_toml("cobot", trees=8, depth=6, horizon_s=60.0) + "tolerance_s = 0.5\n"
"""A small cobot config and the start of its [trainer.labels] table, which FLAG and EVENTS complete."""

FLAG = (
    LABELS
    + """source = "flag"
[trainer.labels.flag]
column = "protective_stop "
on = ["True"]
min_gap_s = 30.0
failure_mode = "protective_stop"
component = "arm"
"""
)

EVENTS = (
    LABELS
    + """source = "events"
[trainer.labels.events]
event_log = "faults.jsonl"
time = "stamp"
robot = "cell"
component = "axis"
mode = "code"
modes = {E17 = "overheating_stop", E22 = "bearing_alarm"}
"""
)


@pytest.fixture(scope="module", name="export")
def _export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[tuple[str, float, str, str]]]:
    """A cobot export (stop flag, no truth) of a small simulated fleet, and its failures."""
    root = tmp_path_factory.mktemp("cobot")
    train, test = small_fleet(root / "sim", seed=11)
    failures = cobot_export(train, root / "train")
    failures += cobot_export(test, root / "test", prefix="test-")
    return root / "train", root / "test", failures


def _train(config: Path, train: Path, test: Path, out: Path) -> int:
    argv = ["--config", str(config), "--train-csv", str(train), "--test-csv", str(test), "--out", str(out)]
    return cli.main([*argv, "--no-report"])


@pytest.fixture(name="flag_config")
def _flag_config(tmp_path: Path) -> Path:
    """A config.toml with source = "flag"."""
    config = tmp_path / "config.toml"
    config.write_text(FLAG)
    return config


@pytest.fixture(scope="module", name="flag_version")
def _flag_version(
    export: tuple[Path, Path, list[tuple[str, float, str, str]]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """One training run with source = "flag", read (never changed) by the tests that inspect it."""
    root = tmp_path_factory.mktemp("flag")
    config = root / "config.toml"
    config.write_text(FLAG)
    assert _train(config, export[0], export[1], root / "models") == 0
    return root / "models" / "cobot" / "1"


def test_a_stop_flag_column_labels_the_windows_before_each_stop(
    export: tuple[Path, Path, list[tuple[str, float, str, str]]], flag_version: Path
) -> None:
    """With source = "flag", the stops become events of a free-form mode with one head and an event table."""
    version = flag_version
    manifest = ModelManifest.read(version)
    assert [(h.failure_mode, h.component) for h in manifest.heads] == [("protective_stop", "arm")]
    metrics = json.loads((version / "metrics.json").read_text())
    test_failures = [f for f in export[2] if f[0].startswith("test-")]
    assert metrics["metrics"]["events"] == len(test_failures)
    rows = list(csv.DictReader((version / "events.csv").read_text().splitlines()))
    assert len([r for r in rows if r["onset"]]) == len(test_failures)


def test_an_event_log_in_the_controllers_naming_labels_and_counts_every_unused_row(
    export: tuple[Path, Path, list[tuple[str, float, str, str]]], tmp_path: Path
) -> None:
    """With source = "events", renamed codes become heads; bad, foreign and outside rows are quarantined."""
    codes = {"overheating": "E17", "bearing_wear": "E22"}
    lines = [
        json.dumps({"stamp": ts, "cell": robot, "axis": component, "code": codes.get(mode, mode)})
        for robot, ts, mode, component in export[2]
    ]
    lines.append(json.dumps({"stamp": "not a time", "cell": "robot-001", "code": "E17"}))
    lines.append(json.dumps({"stamp": 1767225600.0, "cell": "robot-999", "code": "E17"}))
    lines.append(json.dumps({"stamp": 1.0, "cell": "robot-001", "code": "E17"}))
    lines.append("{broken")
    (tmp_path / "faults.jsonl").write_text("\n".join(lines) + "\n")
    config = tmp_path / "config.toml"
    config.write_text(EVENTS)
    assert _train(config, export[0], export[1], tmp_path / "models") == 0
    version = tmp_path / "models" / "cobot" / "1"
    manifest = ModelManifest.read(version)
    modes = {h.failure_mode for h in manifest.heads}
    assert {"overheating_stop", "bearing_alarm"} & modes
    assert not {"E17", "E22"} & modes
    reasons = [row["reason"] for row in csv.DictReader((version / "quarantine.csv").read_text().splitlines())]
    for reason in ("event_bad_time", "event_robot_not_in_data", "event_outside_log", "event_bad_row"):
        assert reason in reasons


def test_edges_closer_than_the_minimum_gap_are_one_event() -> None:
    """Two rising edges 3 s apart under min_gap_s = 10 make one event, and the merge is reported."""
    ts = np.arange(0.0, 30.0, 1.0)
    on = np.zeros(len(ts), dtype=bool)
    on[[5, 6, 9, 20]] = True
    config = FlagLabels(column="stop", min_gap_s=10.0)
    events, merged = flag_events("r", "log.csv", ts, on, config)
    assert [(e.onset, e.end) for e in events] == [(5.0, 9.0), (20.0, 20.0)]
    assert [m.reason for m in merged] == ["event_merged"]


def test_every_printed_test_figure_is_recomputable_from_the_saved_scores(flag_version: Path) -> None:
    """PR-AUC and macro F1 in metrics.json equal scikit-learn's on scores.csv's labels and scores."""
    version = flag_version
    metrics = json.loads((version / "metrics.json").read_text())["metrics"]
    rows = list(csv.DictReader((version / "scores.csv").read_text().splitlines()))
    labels = np.array([int(r["label"]) for r in rows])
    score_columns = [c for c in rows[0] if c.startswith("p_")]
    scores = np.array([[float(r[c]) for c in score_columns] for r in rows])
    classes = [c.removeprefix("p_") for c in score_columns]
    index = {name: int(r["label"]) for r in rows for name in [r["class"]]}
    positive_columns = [k for k, name in enumerate(classes) if name != "healthy"]
    pr_auc = np.mean(
        [average_precision_score(labels == index[classes[k]], scores[:, k]) for k in positive_columns]
    )
    assert metrics["pr_auc"] == pytest.approx(pr_auc, abs=1e-12)
    predicted = np.array([index.get(classes[k], -1) for k in scores.argmax(axis=1)])
    present = sorted(set(labels.tolist()) | set(predicted.tolist()))
    assert metrics["f1_macro"] == pytest.approx(
        f1_score(labels, predicted, average="macro", labels=present, zero_division=0), abs=1e-12
    )


def test_train_list_and_the_gate_report_the_same_pr_auc(
    export: tuple[Path, Path, list[tuple[str, float, str, str]]],
    flag_config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The PR-AUC a run stores, the one `list` prints and the one the gate measures on the same data agree."""
    config = flag_config
    out = tmp_path / "models"
    argv = ["--config", str(config), "--train-csv", str(export[0]), "--test-csv", str(export[1])]
    assert cli.main([*argv, "--out", str(out), "--no-report", "--promote"]) == 0
    stored = json.loads((out / "cobot" / "1" / "metrics.json").read_text())["metrics"]["pr_auc"]
    gate = json.loads((out / "cobot" / "registry.json").read_text())["history"][0]["gate"]
    assert gate["metric"] == "pr_auc"
    assert gate["challenger"] == pytest.approx(stored, abs=1e-6)
    capsys.readouterr()
    assert cli.main(["list", "--config", str(config), "--out", str(out)]) == 0
    assert f"pr_auc={stored:.4g}" in capsys.readouterr().out


def test_inspect_prints_what_the_trainer_will_see(
    export: tuple[Path, Path, list[tuple[str, float, str, str]]],
    flag_config: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`inspect` shows rows and sample rate per robot, events per mode, label balance and quarantine."""
    assert cli.main(["inspect", str(export[0]), str(export[1]), "--config", str(flag_config)]) == 0
    text = capsys.readouterr().out
    assert "== train:" in text
    assert "== test:" in text
    assert "robot robot-001: 15000 rows over 1500 s, 10 Hz observed" in text
    train_events = sum(1 for f in export[2] if not f[0].startswith("test-"))
    assert f"failure events per mode: protective_stop {train_events}" in text
    assert "windows per label: healthy " in text
    assert "quarantine by reason: none" in text
