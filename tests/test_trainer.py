"""The trainer minimum: simulator logs → evaluated, parity-checked ONNX model in the registry layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.contract.features import batch_features
from agent.contract.manifest import ModelManifest, file_sha256
from robotpm_sim.fleet import simulate_fleet
from tests.fleets import small_fleet
from tests.trainer_configs import trainer_toml
from trainer import cli
from trainer.errors import DataError, ParityError, SourceError
from trainer.stages import trained_model

SMALL_CONFIG = trainer_toml("arm-test", trees=8, depth=6, horizon_s=60.0)


@pytest.fixture(scope="module", name="fleet")
def _fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Simulator output directories: 4 training robots and 2 test robots (another seed), 10 Hz."""
    return small_fleet(tmp_path_factory.mktemp("fleet"), seed=7)


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(SMALL_CONFIG, encoding="utf-8")
    return path


def _train(config: Path, train: Path, test: Path, out: Path, *extra: str) -> int:
    argv = ["--config", str(config), "--train-csv", str(train), "--test-csv", str(test), "--out", str(out)]
    return cli.main([*argv, "--no-report", *extra])


@pytest.fixture(scope="module", name="trained")
def _trained(fleet: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One training run of the small config, read (never changed) by the tests that only inspect it."""
    root = tmp_path_factory.mktemp("trained")
    config = root / "config.toml"
    config.write_text(SMALL_CONFIG, encoding="utf-8")
    assert _train(config, *fleet, root / "models") == 0
    return root / "models" / "arm-test" / "1"


def _log_without_truth(train: Path, root: Path) -> Path:
    """`root` holding one robot, robot-u, with a training robot's arm1.csv and no truth.csv."""
    robot = root / "robot-u"
    robot.mkdir(parents=True)
    (robot / "arm1.csv").write_bytes(next(train.glob("*/arm1.csv")).read_bytes())
    return root


class TestTrainMinimum:
    def test_writes_model_manifest_and_metrics_into_the_registry_layout(self, trained: Path) -> None:
        """`robotpm-train --train-csv --test-csv` writes models/<name>/1/ with model, manifest, metrics."""
        version = trained
        assert {"model.onnx", "manifest.json", "metrics.json", "config.json"} <= {
            p.name for p in version.iterdir()
        }
        manifest = ModelManifest.read(version)
        assert (manifest.sha256, manifest.length) == file_sha256(version / "model.onnx")
        assert manifest.model_id == "arm-test"
        assert manifest.version == 1
        assert manifest.training["data_hash"]
        assert manifest.training["code_version"]
        metrics = json.loads((version / "metrics.json").read_text())
        assert metrics["parity"]["max_abs_diff"] <= 1e-4
        snapshot = json.loads((version / "snapshot.json").read_text())
        assert snapshot["train"]["data_hash"] == manifest.training["train_data_hash"]
        assert len(snapshot["train"]["files"]) == 8  # 4 robots × (log + truth)
        profile = json.loads((version / "profile.json").read_text())
        assert profile["train"]["rows"] == 4 * 15_000

    def test_versions_are_monotonic(self, fleet: tuple[Path, Path], config: Path, tmp_path: Path) -> None:
        """A second run writes version 2 beside version 1."""
        out = tmp_path / "models"
        assert _train(config, *fleet, out) == 0
        assert _train(config, *fleet, out) == 0
        assert sorted(p.name for p in (out / "arm-test").iterdir() if p.is_dir()) == ["1", "2"]
        assert ModelManifest.read(out / "arm-test" / "2").version == 2

    def test_golden_vectors_reproduce_in_onnxruntime(self, trained: Path) -> None:
        """Each golden vector of the manifest gives its expected outputs in onnxruntime."""
        version = trained
        manifest = ModelManifest.read(version)
        session = ort.InferenceSession(str(version / "model.onnx"))
        assert manifest.golden
        for golden in manifest.golden:
            x = np.array([golden.features], dtype=np.float32)
            for name, expected in golden.expected.items():
                got = session.run([name], {manifest.onnx.input_name: x})[0][0]
                np.testing.assert_allclose(got, expected, atol=golden.tolerance)

    def test_manifest_features_are_the_agents_batch_features(
        self, fleet: tuple[Path, Path], trained: Path
    ) -> None:
        """The model scores the agent's own batch_features of a log with the config's channel order."""
        manifest = ModelManifest.read(trained)
        assert manifest.feature_spec.window == 80
        log = next(fleet[1].glob("*/arm1.csv"))
        header = log.read_text().splitlines()[0].split(",")
        table = np.loadtxt(log, delimiter=",", skiprows=1)
        columns = [header.index(f"A{j}_{k}") for k in "ITV" for j in range(1, 7)] + [header.index("TOOL_I")]
        features, _ = batch_features(table[:, columns], manifest.feature_spec)
        session = ort.InferenceSession(str(trained / "model.onnx"))
        scores = session.run(["probabilities"], {"features": features.astype(np.float32)})[0]
        assert scores.shape == (len(features), len(manifest.heads) + 1)
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


class TestParityRefusal:
    def test_onnx_mismatch_refuses_and_writes_nothing(
        self,
        fleet: tuple[Path, Path],
        config: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """An ONNX graph whose outputs differ from scikit-learn is refused: exit 1, no version directory."""
        real = trained_model.run_onnx

        def perturbed(onnx_bytes: bytes, features: np.ndarray, output: str) -> np.ndarray:
            result = real(onnx_bytes, features, output)
            result[0, 0] += 0.01
            return result

        monkeypatch.setattr(trained_model, "run_onnx", perturbed)
        out = tmp_path / "models"
        assert _train(config, *fleet, out) == 1
        assert "refusing to write the model" in capsys.readouterr().err
        assert not (out / "arm-test").exists() or not any((out / "arm-test").iterdir())

    def test_parity_error_is_a_trainer_export_error(self) -> None:
        """check_parity raises ParityError naming the rows and the tolerance."""
        from trainer.config import ParityConfig

        expected = np.zeros((4, 2))
        actual = expected.copy()
        actual[2, 1] = 1e-3
        with pytest.raises(ParityError, match="1 of 4 test rows"):
            trained_model.check_parity(expected, actual, ParityConfig(tolerance=1e-4))
        assert trained_model.check_parity(expected, expected, ParityConfig())[0] == 0.0


class TestBadInput:
    def test_missing_column_names_the_file_and_column(
        self, fleet: tuple[Path, Path], config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A log without a mapped column fails with exit 1 and a message naming file and column."""
        bad = tmp_path / "bad" / "robot-x"
        bad.mkdir(parents=True)
        source = next(fleet[0].glob("*/arm1.csv"))
        lines = source.read_text().splitlines()
        header = lines[0].split(",")
        drop = header.index("A3_T")
        rows = [",".join(v for i, v in enumerate(line.split(",")) if i != drop) for line in lines[:500]]
        (bad / "arm1.csv").write_text("\n".join(rows) + "\n")
        out = tmp_path / "models"
        assert _train(config, bad.parent, fleet[1], out) == 1
        err = capsys.readouterr().err
        assert "A3_T" in err
        assert "arm1.csv" in err
        assert not out.exists()

    def test_missing_path_is_a_source_error(self, tmp_path: Path) -> None:
        """A path that does not exist raises SourceError naming it."""
        from trainer.config import TrainerConfig
        from trainer.stages.extraction import DataExtractionAnalysis

        with pytest.raises(SourceError, match="nope"):
            DataExtractionAnalysis(TrainerConfig().record_schema()).extract(tmp_path / "nope")

    def test_empty_file_is_a_data_error(self, tmp_path: Path) -> None:
        """An empty CSV is refused with a message naming it."""
        from trainer.config import TrainerConfig
        from trainer.stages.extraction import DataExtractionAnalysis

        (tmp_path / "arm1.csv").write_text("")
        with pytest.raises(DataError, match=r"arm1\.csv: empty file"):
            DataExtractionAnalysis(TrainerConfig().record_schema()).extract(tmp_path / "arm1.csv")

    def test_logs_without_truth_have_absent_labels(
        self, fleet: tuple[Path, Path], config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Training logs without truth.csv fail with 'labels are absent' and write nothing."""
        unlabelled = _log_without_truth(fleet[0], tmp_path / "unlabelled")
        out = tmp_path / "models"
        assert _train(config, unlabelled, fleet[1], out) == 1
        assert "labels are absent" in capsys.readouterr().err
        assert not out.exists()

    def test_bad_rows_are_quarantined_with_reason_and_line(
        self, fleet: tuple[Path, Path], tmp_path: Path
    ) -> None:
        """Unparseable rows are left out and reported with file, line number and reason."""
        from trainer.config import TrainerConfig
        from trainer.stages.extraction import DataExtractionAnalysis

        robot = tmp_path / "robot-q"
        robot.mkdir()
        source = next(fleet[0].glob("*/arm1.csv"))
        lines = source.read_bytes().splitlines(keepends=True)[:200]
        lines[10] = b"1767225600.5,not,a,number\n"
        fields = lines[20].split(b",")
        fields[2] = b"abc"  # A1_I, a mapped channel
        lines[20] = b",".join(fields)
        (robot / "arm1.csv").write_bytes(b"".join(lines))
        dataset = DataExtractionAnalysis(TrainerConfig().record_schema()).extract(robot)
        assert dataset.n_rows == 199 - 2
        assert [(q.line, q.reason) for q in dataset.quarantine] == [(11, "field_count"), (21, "not_numeric")]
        profile = dataset.profile()
        assert profile["quarantined"] == 2
        assert profile["channels"]["j1_current"]["count"] == 197

    def test_a_run_with_bad_rows_writes_its_quarantine(
        self, fleet: tuple[Path, Path], config: Path, tmp_path: Path
    ) -> None:
        """A model trained on logs with a bad line ships quarantine.csv naming file, line and reason."""
        train = tmp_path / "train"
        for robot in fleet[0].iterdir():
            (train / robot.name).mkdir(parents=True)
            for name in ("arm1.csv", "truth.csv"):
                (train / robot.name / name).write_bytes((robot / name).read_bytes())
        log = train / "robot-001" / "arm1.csv"
        lines = log.read_bytes().splitlines(keepends=True)
        lines[100] = b"garbage\n"
        log.write_bytes(b"".join(lines))
        out = tmp_path / "models"
        assert _train(config, train, fleet[1], out) == 0
        quarantine = (out / "arm-test" / "1" / "quarantine.csv").read_text().splitlines()
        assert quarantine[0] == "source,line,offset,reason,detail"
        assert quarantine[1].split(",")[1:4] == ["101", str(sum(map(len, lines[:100]))), "field_count"]

    def test_config_error_exits_2(self, fleet: tuple[Path, Path], tmp_path: Path) -> None:
        """A bad [trainer] value is a config error: exit code 2."""
        config = tmp_path / "config.toml"
        config.write_text("[trainer.features]\nwindow = 1\n")
        assert _train(config, *fleet, tmp_path / "models") == 2


class TestSelectionAndProfiles:
    def test_candidates_are_ranked_by_the_configured_metric(
        self, fleet: tuple[Path, Path], tmp_path: Path
    ) -> None:
        """Every candidate's grouped-CV score is recorded, and the best by the config's metric is trained."""
        config = tmp_path / "config.toml"
        config.write_text(
            SMALL_CONFIG
            + '[trainer.selection]\nmetric = "f1_macro"\n'
            + 'candidates = ["logistic_regression", "random_forest"]\n',
            encoding="utf-8",
        )
        out = tmp_path / "models"
        assert _train(config, *fleet, out) == 0
        metrics = json.loads((out / "arm-test" / "1" / "metrics.json").read_text())
        selection = metrics["selection"]
        assert set(selection) == {"logistic_regression", "random_forest"}
        best = max(selection, key=selection.get)
        assert metrics["lineage"]["estimator"] == best
        assert metrics["metrics"]["cv_f1_macro"] == selection[best]

    def test_profile_and_environment_override_the_trainer_table(self, tmp_path: Path) -> None:
        """[profiles.test.trainer] and ROBOTPM__TRAINER__… override [trainer], validated by pydantic."""
        from agent.contract.errors import ConfigError
        from trainer.config import load_trainer_config

        path = tmp_path / "config.toml"
        path.write_text(
            SMALL_CONFIG
            + "[profiles.test.trainer.model]\nn_estimators = 3\n[profiles.prod.trainer]\nseed = 99\n",
            encoding="utf-8",
        )
        assert load_trainer_config(path).model.n_estimators == 8
        assert load_trainer_config(path, "test").model.n_estimators == 3
        environ = {"ROBOTPM__TRAINER__MODEL__N_ESTIMATORS": "5", "ROBOTPM_PROFILE": "prod"}
        config = load_trainer_config(path, environ=environ)
        assert (config.model.n_estimators, config.seed) == (5, 99)
        with pytest.raises(ConfigError, match=r"trainer\.model\.n_estimators"):
            load_trainer_config(path, environ={"ROBOTPM__TRAINER__MODEL__N_ESTIMATORS": "0"})


def test_out_of_range_values_are_quarantined_by_the_configured_limits(
    fleet: tuple[Path, Path], tmp_path: Path
) -> None:
    """A value outside the channel's configured limits is quarantined as out_of_range."""
    from trainer.config import TrainerConfig
    from trainer.stages.extraction import DataExtractionAnalysis

    robot = tmp_path / "robot-r"
    robot.mkdir()
    source = next(fleet[0].glob("*/arm1.csv"))
    lines = source.read_bytes().splitlines(keepends=True)[:100]
    fields = lines[50].split(b",")
    fields[8] = b"500.0"  # A1_T
    lines[50] = b",".join(fields)
    (robot / "arm1.csv").write_bytes(b"".join(lines))
    schema = TrainerConfig(limits={"j1_temp": (-40.0, 200.0)}).record_schema()
    dataset = DataExtractionAnalysis(schema).extract(robot)
    assert [(q.line, q.reason) for q in dataset.quarantine] == [(51, "out_of_range")]


def test_a_rotated_agent_log_directory_reads_like_one_file(tmp_path: Path) -> None:
    """A log rotated by size (arm1.csv.3 … arm1.csv, each with a header) reads as one ordered stream."""
    from trainer.config import TrainerConfig
    from trainer.stages.extraction import DataExtractionAnalysis

    common = {"robots": 1, "seconds": 300.0, "rate_hz": 10.0, "seed": 4}
    simulate_fleet(tmp_path / "whole", **common)
    simulate_fleet(tmp_path / "rotated", rotate_bytes=60_000, **common)
    rotated = tmp_path / "rotated" / "robot-001"
    assert len(list(rotated.glob("arm1.csv.*"))) >= 3
    extraction = DataExtractionAnalysis(TrainerConfig().record_schema())
    whole = extraction.extract(tmp_path / "whole" / "robot-001")
    pieces = extraction.extract(rotated)
    assert pieces.quarantine == []
    np.testing.assert_array_equal(pieces.series[0].timestamps, whole.series[0].timestamps)
    np.testing.assert_array_equal(pieces.series[0].values, whole.series[0].values)
    assert pieces.series[0].truth is not None


def test_json_lines_logs_read_like_csv(tmp_path: Path) -> None:
    """A JSON-lines log (arm1.jsonl) gives the same samples as the CSV log of the same robot."""
    from trainer.config import TrainerConfig
    from trainer.stages.extraction import DataExtractionAnalysis

    common = {"robots": 1, "seconds": 120.0, "rate_hz": 10.0, "seed": 6}
    simulate_fleet(tmp_path / "csv", **common)
    simulate_fleet(tmp_path / "jsonl", fmt="jsonl", **common)
    extraction = DataExtractionAnalysis(TrainerConfig().record_schema())
    from_csv = extraction.extract(tmp_path / "csv")
    from_jsonl = extraction.extract(tmp_path / "jsonl")
    assert from_jsonl.sources[0].endswith("arm1.jsonl")
    np.testing.assert_array_equal(from_jsonl.series[0].values, from_csv.series[0].values)


class TestCleaningAndResampling:
    def _series(self) -> object:
        from trainer.stages.extraction import RobotSeries
        from trainer.stages.truth import Truth

        ts = np.array([0.0, 0.1, 0.1, 0.21, 0.3, 0.4, 3.0, 3.1])  # a repeated stamp, jitter, a 2.6 s gap
        values = np.column_stack([ts * 10.0, -ts])
        n = len(ts)
        truth = Truth(
            mode=np.array(["healthy"] * 5 + ["overheating"] * 3),
            component=np.array([""] * 5 + ["motors"] * 3),
            health=np.linspace(1.0, 0.3, n),
            failure=np.array([False] * 7 + [True]),
            rul_s=np.array([3.1, 3.0, 3.0, 2.89, 2.8, 2.7, 0.1, 0.0]),
        )
        return RobotSeries("r", "test", ts, values, truth)

    def test_clean_drops_repeated_timestamps(self) -> None:
        """A timestamp logged twice keeps its first sample only."""
        from trainer.stages.preparation import clean

        cleaned = clean(self._series())  # type: ignore[arg-type]
        assert cleaned.timestamps.tolist() == [0.0, 0.1, 0.21, 0.3, 0.4, 3.0, 3.1]

    def test_resample_makes_a_regular_grid_without_bridging_gaps(self) -> None:
        """Resampling at 10 Hz interpolates channels linearly, carries truth forward, skips the gap."""
        from trainer.stages.preparation import clean, resample

        series = resample(clean(self._series()), 10.0, max_gap_s=0.5)  # type: ignore[arg-type]
        np.testing.assert_allclose(series.timestamps, [0.0, 0.1, 0.2, 0.3, 0.4, 3.0, 3.1], atol=1e-9)
        np.testing.assert_allclose(series.values[:, 0], series.timestamps * 10.0, atol=1e-9)
        assert series.truth is not None
        assert series.truth.mode.tolist()[-2:] == ["overheating", "overheating"]
        assert series.truth.failure.tolist() == [False] * 6 + [True]

    def test_a_resampled_run_trains_and_registers(self, fleet: tuple[Path, Path], tmp_path: Path) -> None:
        """With trainer.features.resample_hz the whole run works and records the setting in config.json."""
        config = tmp_path / "config.toml"
        config.write_text(
            SMALL_CONFIG.replace("hop = 40\n", "hop = 40\nresample_hz = 10.0\n"), encoding="utf-8"
        )
        out = tmp_path / "models"
        assert _train(config, *fleet, out) == 0
        saved = json.loads((out / "arm-test" / "1" / "config.json").read_text())
        assert saved["features"]["resample_hz"] == 10.0
