"""The public benchmark data that travels with the repository (data/): AI4I 2020 and C-MAPSS FD001."""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.contract.features import FeatureSpec
from agent.contract.manifest import ModelManifest
from trainer.config import TrainerConfig
from trainer.datafiles import DEFAULT_DATA, read_data_file, read_data_text
from trainer.datasets import (
    AI4I_FEATURES,
    AI4I_MODES,
    CMAPSS_BOOSTINGS,
    CMAPSS_PAD_READINGS,
    CMAPSS_SENSORS,
    _cmapss_model,
    cmapss_channels,
    cmapss_end_points,
    cmapss_selection,
    cmapss_windows,
    load_ai4i,
    load_ai4i_modes,
    load_cmapss,
    run_ai4i,
    run_cmapss,
)
from trainer.errors import DataError, SourceError
from trainer.robot_failures import PROBLEMS, load_problem, run_robot_failures

AI4I = DEFAULT_DATA / "ai4i2020"
CMAPSS = DEFAULT_DATA / "cmapss_fd001"


class TestAi4i:
    def test_physics_features_follow_the_documented_formulas(self) -> None:
        """Power is torque × angular speed and the temperature difference is process − air."""
        features, label = load_ai4i(AI4I / "ai4i2020.csv")
        assert features.shape == (10_000, len(AI4I_FEATURES))
        assert int(label.sum()) == 339
        first = features[0]  # M, 298.1 K, 308.6 K, 1551 rpm, 42.8 Nm, 0 min
        assert first[8] == pytest.approx(42.8 * 1551 * 2 * np.pi / 60)
        assert first[9] == pytest.approx(10.5)

    def test_each_rule_margin_crosses_zero_exactly_where_the_data_flags_its_mode(self) -> None:
        """Heat-dissipation and power margins are negative, overstrain positive, exactly on flagged rows."""
        path = AI4I / "ai4i2020.csv"
        features, _ = load_ai4i(path)
        modes = load_ai4i_modes(path)
        column = {name: features[:, AI4I_FEATURES.index(name)] for name in AI4I_FEATURES}
        flagged = {mode: modes[:, AI4I_MODES.index(mode)] == 1 for mode in ("HDF", "PWF", "OSF")}
        assert np.array_equal(column["heat_dissipation_margin"] < 0, flagged["HDF"])
        assert np.array_equal(column["power_margin"] < 0, flagged["PWF"])
        assert np.array_equal(column["overstrain_margin"] > 0, flagged["OSF"])
        # trees cannot split values closer than 1e-7: the two sides stay a resolution step apart
        heat = column["heat_dissipation_margin"]
        assert heat[~flagged["HDF"]].min() - heat[flagged["HDF"]].max() > 1e-3

    @pytest.mark.slow
    def test_trains_exports_with_parity_and_registers(self, tmp_path: Path) -> None:
        """The AI4I run writes an ONNX model that reproduces scikit-learn, with F1 and per-mode recall."""
        summary = run_ai4i(
            TrainerConfig(), AI4I, tmp_path, seed=7, report=True, folds=3, candidates=[("rule_margins", 1)]
        )
        version = Path(summary["version_dir"])
        metrics = json.loads((version / "metrics.json").read_text())["metrics"]
        assert metrics["f1"] > 0.8
        assert metrics["parity_max_abs_diff"] <= 1e-4
        for rule_based in ("HDF", "PWF", "OSF"):  # failures set by fixed rules on the inputs are learned
            assert metrics[f"recall_{rule_based}"] >= 0.9
        assert (version / "report" / "report.pdf").read_bytes().startswith(b"%PDF")
        card = json.loads((version / "card.json").read_text())
        session = ort.InferenceSession(str(version / "model.onnx"))
        features, _ = load_ai4i(AI4I / "ai4i2020.csv")
        inputs = features[:5, [AI4I_FEATURES.index(c) for c in card["input"]["columns"]]]
        out = session.run([card["output"]["name"]], {"features": inputs.astype(np.float32)})[0]
        assert out.shape == (5, 2)

    def test_missing_column_is_named(self, tmp_path: Path) -> None:
        """A copy without the torque column is refused naming it."""
        lines = read_data_text(AI4I / "ai4i2020.csv").splitlines()[:50]
        header = lines[0].split(",")
        drop = header.index("Torque [Nm]")
        (tmp_path / "ai4i2020.csv").write_text(
            "\n".join(",".join(v for i, v in enumerate(line.split(",")) if i != drop) for line in lines)
            + "\n"
        )
        with pytest.raises(DataError, match=r"Torque \[Nm\]"):
            load_ai4i(tmp_path / "ai4i2020.csv")


class TestCmapss:
    def test_reads_the_official_files(self) -> None:
        """Train and test tables have 26 columns and 100 engines each."""
        train, test = load_cmapss(CMAPSS / "train_FD001.txt"), load_cmapss(CMAPSS / "test_FD001.txt")
        assert train.shape == (20_631, 26)
        assert len(np.unique(test[:, 0])) == 100

    def test_one_window_candidate_reaches_a_useful_rmse_with_an_agent_manifest(self, tmp_path: Path) -> None:
        """A 30-cycle boosting + extra-trees blend scores RMSE < 16 and writes a remaining-life manifest."""
        summary = run_cmapss(
            TrainerConfig(),
            CMAPSS,
            tmp_path,
            seed=7,
            report=True,
            candidates=[(30, ("mean", "slope"))],
            shares=[0.4],
        )
        assert summary["metrics"]["rmse"] < 16.0
        report = Path(summary["version_dir"]) / "report"
        assert {"residuals.png", "predicted_vs_actual.png", "overlay_units.png"} <= {
            p.name for p in report.iterdir()
        }
        assert (report / "report.pdf").read_bytes().startswith(b"%PDF")
        manifest = ModelManifest.read(Path(summary["version_dir"]))
        assert manifest.task == "remaining_life"
        assert manifest.heads[0].direction == "lower_is_worse"
        assert manifest.feature_spec.window == 30
        session = ort.InferenceSession(str(Path(summary["version_dir"]) / "model.onnx"))
        for golden in manifest.golden:
            got = session.run(["variable"], {"features": np.array([golden.features], dtype=np.float32)})[0][0]
            np.testing.assert_allclose(got, golden.expected["variable"], rtol=1e-5, atol=golden.tolerance)

    def test_the_first_windows_are_padded_with_the_mean_of_the_first_readings(self) -> None:
        """Before its first cycle an engine reads as the mean of its first readings, at its first cycle."""
        train = load_cmapss(CMAPSS / "train_FD001.txt")
        spec = FeatureSpec(channels=cmapss_channels(), window=5, hop=1, statistics=("mean", "last"))
        x, unit, cycle = cmapss_windows(train, spec)
        first = train[train[:, 0] == 1][:, [1, *(4 + s for s in CMAPSS_SENSORS)]]
        pad = first[:CMAPSS_PAD_READINGS].mean(axis=0)
        pad[0] = first[0, 0]
        means = x[0, 0::2]
        np.testing.assert_allclose(means, (4 * pad + first[0]) / 5)
        np.testing.assert_allclose(x[0, 1::2], first[0])
        assert (unit[0], cycle[0]) == (1.0, 1.0)

    def test_end_points_cut_each_engine_at_every_test_length_it_outlives(self) -> None:
        """A length shared by two test engines counts twice; one an engine does not outlive, never."""
        unit = np.array([1.0] * 5 + [2.0] * 3)
        cycle = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, 3.0])
        ends = cmapss_end_points(unit, cycle, np.array([2, 2, 4, 5, 9]))
        expected = [(1.0, 2.0), (1.0, 2.0), (1.0, 4.0), (2.0, 2.0), (2.0, 2.0)]
        assert expected == [(unit[i], cycle[i]) for i in ends]

    def test_the_model_averages_the_boostings_and_the_extra_trees_by_share(self) -> None:
        """The boostings split 1 - share equally, the extra trees get share; at share 0 they are left out."""
        blend = _cmapss_model(0.3, seed=7)
        assert len(blend.estimators) == CMAPSS_BOOSTINGS + 1
        np.testing.assert_allclose(blend.weights, [0.7 / CMAPSS_BOOSTINGS] * CMAPSS_BOOSTINGS + [0.3])
        seeds = [member.random_state for _, member in blend.estimators[:CMAPSS_BOOSTINGS]]
        assert seeds == list(range(7, 7 + CMAPSS_BOOSTINGS))
        assert [name for name, _ in _cmapss_model(0.0, seed=7).estimators] == [
            f"boosting_{k}" for k in range(CMAPSS_BOOSTINGS)
        ]

    def test_the_selection_ranks_candidates_by_end_point_rmse_without_the_truth(self) -> None:
        """The ranking reads only the training table and the test lengths, lowest end-point RMSE first."""
        train = load_cmapss(CMAPSS / "train_FD001.txt")
        train = train[train[:, 0] <= 30]
        ranking = cmapss_selection(
            train, np.array([31, 60, 90]), seed=7, candidates=[(30, ("mean", "slope"))], shares=[0.0, 1.0]
        )
        assert [r[0] for r in ranking] == sorted(r[0] for r in ranking)
        assert {r[4] for r in ranking} == {0.0, 1.0}
        assert all(0.0 < r[0] < 60.0 and 0.0 < r[1] < 60.0 for r in ranking)

    def test_bad_files_are_clear_errors(self, tmp_path: Path) -> None:
        """A missing file and a table with the wrong column count name the file."""
        with pytest.raises(SourceError, match=r"no such file \(nor train_FD001\.txt\.xz\)"):
            load_cmapss(tmp_path / "train_FD001.txt")
        (tmp_path / "bad.txt").write_text("1 2 3\n4 5 6\n")
        with pytest.raises(DataError, match="expected 26 columns"):
            load_cmapss(tmp_path / "bad.txt")


class TestDataInTheRepository:
    @pytest.mark.parametrize("folder", ["ai4i2020", "cmapss_fd001", "robot_execution_failures"])
    def test_each_data_set_travels_compressed_with_a_readme_that_vouches_for_its_bytes(
        self, folder: str
    ) -> None:
        """Each data/<set>/*.xz decompresses to the bytes its README lists, beside source and licence."""
        directory = DEFAULT_DATA / folder
        readme = (directory / "README.md").read_text(encoding="utf-8")
        assert "## Source and citation" in readme
        assert "icense" in readme
        packed = sorted(directory.glob("*.xz"))
        assert packed
        for path in packed:
            raw = lzma.decompress(path.read_bytes())
            assert f"| `{path.name}` | {len(raw):,} | `{hashlib.sha256(raw).hexdigest()}` |" in readme

    def test_a_plain_file_is_read_before_its_compressed_twin(self, tmp_path: Path) -> None:
        """A decompressed copy beside (or instead of) the .xz file is read as it is."""
        (tmp_path / "a.txt").write_bytes(b"plain\n")
        (tmp_path / "b.txt.xz").write_bytes(lzma.compress(b"packed\n"))
        assert read_data_file(tmp_path / "a.txt") == b"plain\n"
        assert read_data_file(tmp_path / "b.txt") == b"packed\n"

    def test_a_corrupt_compressed_file_is_a_data_error_naming_it(self, tmp_path: Path) -> None:
        """Bytes that are not xz are refused naming the file."""
        (tmp_path / "c.txt.xz").write_bytes(b"not xz at all")
        with pytest.raises(DataError, match=r"c\.txt\.xz: not a valid xz file"):
            read_data_file(tmp_path / "c.txt")


class TestRobotExecutionFailures:
    def test_reads_every_instance_of_the_five_problems(self) -> None:
        """The five files hold 88, 47, 47, 117 and 164 instances of 15 × 6 force/torque samples."""
        counts = []
        for problem in PROBLEMS:
            traces, names = load_problem(DEFAULT_DATA / "robot_execution_failures" / f"{problem}.data")
            assert traces.shape[1:] == (15, 6)
            assert len(names) == len(traces)
            counts.append(len(traces))
        assert counts == [88, 47, 47, 117, 164]

    def test_the_worked_example_registers_an_agent_model_per_problem(self, tmp_path: Path) -> None:
        """lp1 gives a cross-validated classifier with one head per failure class and working goldens."""
        summary = run_robot_failures(
            TrainerConfig(), DEFAULT_DATA / "robot_execution_failures", tmp_path, seed=7, problems=("lp1",)
        )
        result = summary["problems"]["lp1"]
        assert result["metrics"]["accuracy"] >= 0.9
        manifest = ModelManifest.read(Path(result["version_dir"]))
        assert [h.failure_mode for h in manifest.heads] == ["collision", "fr_collision", "obstruction"]
        session = ort.InferenceSession(str(Path(result["version_dir"]) / "model.onnx"))
        for golden in manifest.golden:
            got = session.run(["probabilities"], {"features": np.array([golden.features], dtype=np.float32)})
            np.testing.assert_allclose(got[0][0], golden.expected["probabilities"], atol=golden.tolerance)
