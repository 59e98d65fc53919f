"""Drift: PSI against the training quantile bins beside the mean shift, with effect sizes and hysteresis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from jsonschema import Draft202012Validator

from agent.config import DriftConfig, OutboxConfig
from agent.contract.alerts import DriftReport, ModelRef
from agent.contract.errors import ManifestError
from agent.contract.manifest import ModelManifest, ReferenceBins, bin_indices
from agent.contract.topics import RobotTopics
from agent.outbox import Outbox
from agent.publish.telemetry import drift_message, drift_report, drift_summary, heartbeat_record
from agent.schemas import SCHEMA_DIR
from agent.state import StateStore
from agent.streams.drift import DriftMonitor
from agent.testing import ManualClock
from tests.models import SPEC, write_linear_model

FloatArray = npt.NDArray[np.float64]
N = SPEC.n_features  # j1_current__mean, j1_current__max, j1_temp__mean, j1_temp__max


def reference_data(rows: int, seed: int = 0) -> FloatArray:
    """Training windows: two normal features, one skewed, one with repeated (discrete) values."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(rows, N))
    data[:, 1] = rng.exponential(size=rows)
    data[:, 3] = np.round(rng.normal(size=rows) * 2)
    return data


def binned_manifest(tmp_path: Path, reference: FloatArray) -> ModelManifest:
    """The tiny test model with reference statistics and bins computed from `reference`."""
    manifest = write_linear_model(tmp_path)
    stats = manifest.reference.model_copy(
        update={
            "mean": tuple(reference.mean(axis=0)),
            "std": tuple(reference.std(axis=0)),
            "bins": ReferenceBins.from_features(reference),
        }
    )
    return ModelManifest.model_validate({**manifest.model_dump(), "reference": stats.model_dump()})


@pytest.fixture(name="manifest")
def _manifest(tmp_path: Path) -> ModelManifest:
    return binned_manifest(tmp_path, reference_data(50_000))


class TestReferenceBins:
    def test_deciles_hold_a_tenth_each_and_repeated_values_get_fewer_bins(self) -> None:
        """Continuous features get 9 cut points and ~10% per bin; a discrete one fewer bins, exact shares."""
        bins = ReferenceBins.from_features(reference_data(20_000))
        assert 9 == len(bins.edges[0])
        np.testing.assert_allclose(bins.fractions[0], 0.1, atol=0.002)
        assert len(bins.edges[3]) < 9
        discrete = reference_data(20_000)[:, 3]
        counts = np.bincount(bin_indices(bins.edges[3], discrete), minlength=len(bins.edges[3]) + 1)
        np.testing.assert_allclose(bins.fractions[3], counts / len(discrete))

    def test_a_constant_feature_has_one_bin_holding_everything(self) -> None:
        """No cut point, one bin of share 1: PSI stays 0 while the value does not move."""
        data = reference_data(1000)
        data[:, 2] = 7.0
        bins = ReferenceBins.from_features(data)
        assert ((), (1.0,)) == (bins.edges[2], bins.fractions[2])

    def test_a_manifest_without_bins_still_loads_and_bins_of_the_wrong_width_are_refused(
        self, tmp_path: Path, manifest: ModelManifest
    ) -> None:
        """Bins are optional (older manifests); when present they must cover every feature."""
        plain = write_linear_model(tmp_path / "plain")
        assert ModelManifest.from_json(plain.to_json()).reference.bins is None
        body = json.loads(manifest.to_json())
        body["reference"]["bins"]["edges"] = body["reference"]["bins"]["edges"][:-1]
        with pytest.raises(ManifestError, match="bins"):
            ModelManifest.from_json(json.dumps(body))

    def test_cut_points_out_of_order_are_refused(self, manifest: ModelManifest) -> None:
        """Edges must increase strictly, so both sides agree on every bin."""
        body = json.loads(manifest.to_json())
        body["reference"]["bins"]["edges"][0] = sorted(body["reference"]["bins"]["edges"][0], reverse=True)
        with pytest.raises(ManifestError, match="increasing"):
            ModelManifest.from_json(json.dumps(body))


def feed(monitor: DriftMonitor, data: FloatArray, batch: int = 50) -> set[str]:
    """Fold `data` in, in batches as the pipeline would; return every state seen after a batch."""
    states = set()
    for start in range(0, len(data), batch):
        monitor.update(data[start : start + batch])
        states.add(monitor.state)
    return states


class TestDriftMonitor:
    def test_state_is_unknown_until_warmed_up(self, manifest: ModelManifest) -> None:
        """Fewer windows than the warm-up say nothing either way."""
        drift = DriftMonitor(manifest, DriftConfig(warmup_windows=50))
        drift.update(reference_data(10, seed=3))
        assert "unknown" == drift.state

    def test_no_alarm_on_data_from_the_training_distribution_at_large_n(
        self, manifest: ModelManifest
    ) -> None:
        """200,000 windows like the training data, judged after every batch: never drifting, PSI small."""
        drift = DriftMonitor(manifest)
        states = feed(drift, reference_data(200_000, seed=11), batch=500)
        assert {"unknown", "ok"} >= states
        assert "ok" == drift.state
        psi = drift.psi()
        assert psi is not None
        assert float(psi.max()) < 0.05
        assert 0 == drift.drifting_features

    def test_a_shifted_channel_raises_an_alarm_naming_its_features(self, manifest: ModelManifest) -> None:
        """j1_temp moved by 3 training stds: both its features drift with a large PSI, the others do not."""
        drift = DriftMonitor(manifest)
        data = reference_data(4000, seed=12)
        feed(drift, data[:2000])
        assert "ok" == drift.state
        data[2000:, 2] += 3.0
        data[2000:, 3] += 3.0 * reference_data(50_000)[:, 3].std()
        feed(drift, data[2000:])
        assert "drifting" == drift.state
        named = {f.name for f in drift.features() if f.drifting}
        assert {"j1_temp__mean", "j1_temp__max"} == named
        top = drift.features(1)[0]
        assert top.psi is not None
        assert top.psi > 1.0
        assert top.shift > 2.0

    def test_a_few_wild_windows_move_the_mean_but_do_not_make_drift(self, manifest: ModelManifest) -> None:
        """2% of windows at +150 stds shift the mean by 3 stds; the distribution (PSI) barely changes."""
        drift = DriftMonitor(manifest)
        data = reference_data(6000, seed=13)
        data[::50, 0] += 150.0
        feed(drift, data)
        shifts = drift.shifts()
        assert shifts is not None
        assert shifts[0] > 2.0
        assert "ok" == drift.state

    def test_hysteresis_keeps_drifting_until_both_statistics_are_back(self, manifest: ModelManifest) -> None:
        """Raised at a 3-std shift, it stays drifting at 1.5 stds (between clear and raise), clears at 0."""
        config = DriftConfig(half_life_windows=100, psi_min_windows=100)
        drift = DriftMonitor(manifest, config)
        stages = []
        for offset in (0.0, 3.0, 1.5, 0.0):
            data = reference_data(2000, seed=int(offset * 10) + 20)
            data[:, 0] += offset
            feed(drift, data)
            stages.append(drift.state)
        assert ["ok", "drifting", "drifting", "ok"] == stages

    def test_without_reference_bins_the_mean_shift_alone_decides(self, tmp_path: Path) -> None:
        """An older manifest (no bins): no PSI, and a sustained 6-sigma shift of one feature drifts."""
        drift = DriftMonitor(write_linear_model(tmp_path))  # reference: mean 0, std 1
        data = np.random.default_rng(1).normal(size=(2000, N))
        data[:, 1] += 6.0
        feed(drift, data)
        assert (None, "drifting") == (drift.psi(), drift.state)
        assert "j1_current__max" == drift.features(1)[0].name

    def test_batched_updates_equal_one_at_a_time(self, manifest: ModelManifest) -> None:
        """Folding windows in one batch or one by one gives the same shifts and PSI."""
        data = reference_data(600, seed=2)
        whole = DriftMonitor(manifest, DriftConfig(psi_min_windows=100))
        single = DriftMonitor(manifest, DriftConfig(psi_min_windows=100))
        whole.update(data)
        for row in data:
            single.update(row[None, :])
        np.testing.assert_allclose(whole.shifts(), single.shifts(), rtol=1e-9)  # type: ignore[arg-type]
        np.testing.assert_allclose(whole.psi(), single.psi(), rtol=1e-9)  # type: ignore[arg-type]

    def test_non_finite_windows_are_skipped(self, manifest: ModelManifest) -> None:
        """A window with NaN or inf features is no evidence: it is not counted."""
        drift = DriftMonitor(manifest)
        data = reference_data(100, seed=4)
        data[::2, 1] = np.nan
        data[1::4, 2] = np.inf
        drift.update(data)
        assert 25 == drift.windows

    def test_a_state_change_is_taken_once(self, manifest: ModelManifest) -> None:
        """take_change says a report is due after unknown → ok and ok → drifting, once each."""
        drift = DriftMonitor(manifest, DriftConfig(warmup_windows=10))
        drift.update(reference_data(20, seed=5))
        assert (True, False) == (drift.take_change(), drift.take_change())
        data = reference_data(3000, seed=6)
        data[:, 0] += 4.0
        feed(drift, data)
        assert (True, False) == (drift.take_change(), drift.take_change())


class TestDriftMessages:
    def _drifting(self, manifest: ModelManifest) -> DriftMonitor:
        drift = DriftMonitor(manifest)
        data = reference_data(3000, seed=7)
        data[:, 2] += 4.0
        feed(drift, data)
        return drift

    def test_a_drift_report_names_the_features_asks_for_a_retrain_and_validates(
        self, manifest: ModelManifest
    ) -> None:
        """The report on …/drift: QoS 1, not retained, valid against drift-report.schema.json."""
        report = drift_report(
            self._drifting(manifest),
            robot_id="r1",
            site="s1",
            stream="arm1",
            model=ModelRef(id=manifest.model_id, version=manifest.version),
            now=1_780_000_000.0,
            top=3,
        )
        message = drift_message(RobotTopics("s1", "r1"), report)
        assert ("robotpm/v1/s1/r1/drift", "drift", 1, False) == (
            message.topic,
            message.kind,
            message.qos,
            message.retain,
        )
        body = json.loads(message.payload)
        schema = json.loads((SCHEMA_DIR / "drift-report.schema.json").read_text())
        Draft202012Validator(schema).validate(body)
        parsed = DriftReport.model_validate(body)
        assert (parsed.state, parsed.retrain) == ("drifting", True)
        assert "j1_temp__mean" == parsed.features[0].name
        assert 3 == len(parsed.features)

    def test_the_heartbeat_summarises_each_streams_drift(
        self, manifest: ModelManifest, tmp_path: Path
    ) -> None:
        """drift_streams in the heartbeat: state, drifting features, largest PSI and shift, top feature."""
        summary = drift_summary(self._drifting(manifest))
        outbox = Outbox(StateStore(tmp_path / "agent.db"), OutboxConfig(), ManualClock())
        beat = heartbeat_record(
            robot_id="r1",
            site="s1",
            now=1_780_000_000.0,
            uptime_s=1.0,
            counters={},
            outbox=outbox,
            model=None,
            agent_version="0",
            drift="drifting",
            drift_streams={"arm1": summary},
        )
        body = json.loads(beat.model_dump_json())
        schema = json.loads((SCHEMA_DIR / "heartbeat.schema.json").read_text())
        Draft202012Validator(schema).validate(body)
        arm = body["drift_streams"]["arm1"]
        assert ("drifting", "j1_temp__mean") == (arm["state"], arm["top_feature"])
        assert arm["drifting_features"] >= 1
        assert arm["max_psi"] > 1.0
        assert arm["max_shift"] > 2.0
