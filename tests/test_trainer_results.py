"""The README's Results rows: written by `robotpm-train results`, and re-measured within stated tolerances."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainer.config import TrainerConfig
from trainer.datafiles import DEFAULT_DATA
from trainer.datasets import run_ai4i, run_cmapss
from trainer.results import RESULTS_FILE, readme_block, render_rows
from trainer.robot_failures import run_robot_failures

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", name="results")
def _results() -> dict[str, Any]:
    return dict(json.loads((REPO / RESULTS_FILE).read_text(encoding="utf-8")))


def _within(measured: dict[str, float], stored: dict[str, float], tolerances: dict[str, float]) -> None:
    for key, tolerance in tolerances.items():
        assert measured[key] == pytest.approx(stored[key], abs=tolerance), key


def test_the_readme_table_is_what_the_results_command_wrote(results: dict[str, Any]) -> None:
    """README.md's rows between the results markers are docs/results.json rendered, with versions."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme_block(readme) == render_rows(results)
    assert "scikit-learn" in results["versions"]


@pytest.mark.parametrize(
    ("name", "folder", "cross_validated"),
    [("ai4i", "ai4i2020", ("cv_f1", 0.005)), ("cmapss", "cmapss_fd001", ("cv_rmse", 0.05))],
    ids=["ai4i", "cmapss"],
)
def test_the_selected_candidate_gives_the_stored_figures_within_tolerance(
    results: dict[str, Any], tmp_path: Path, name: str, folder: str, cross_validated: tuple[str, float]
) -> None:
    """AI4I's F1/precision/recall and C-MAPSS's RMSE/PHM, re-measured, are within the stored tolerances.

    The candidate search itself is not repeated here (it is each command's slowest part);
    the stored cross-validated figure of the selected candidate (for C-MAPSS, its window,
    statistics and extra-trees share) is checked instead.
    """
    stored = results["sets"][name]
    selected = stored["selected"]
    run: Any
    candidate: tuple[Any, ...]
    extra: dict[str, Any] = {}
    if name == "ai4i":
        run, candidate = run_ai4i, (str(selected["features"]), int(selected["min_samples_leaf"]))
    else:
        run, candidate = run_cmapss, (int(selected["window"]), tuple(selected["statistics"]))
        extra = {"shares": [float(selected["extra_trees_share"])]}
    summary = run(
        TrainerConfig(),
        DEFAULT_DATA / folder,
        tmp_path,
        seed=results["seed"],
        report=False,
        candidates=[candidate],
        **extra,
    )
    key, tolerance = cross_validated
    _within(summary["metrics"], stored["metrics"], {**results["tolerances"][name], key: tolerance})


def test_the_robot_failures_figures_are_re_measured_within_tolerance(
    results: dict[str, Any], tmp_path: Path
) -> None:
    """The worked example's mean macro F1 over the five problems is within the stored tolerance."""
    summary = run_robot_failures(
        TrainerConfig(), DEFAULT_DATA / "robot_execution_failures", tmp_path, seed=results["seed"]
    )
    stored = results["sets"]["robot-failures"]
    _within(summary["metrics"], stored["metrics"], results["tolerances"]["robot-failures"])
