"""Alert explanations that explain the model: channels whose healthy values lower the score most.

Checked against hand-built models (a channel the model ignores is never named, however
unusual), on the policy's own events (one batched scorer call, failures cost no event),
and on the simulator's fault scenarios with the bundled model, end to end through the
agent's pipeline (replay): the faulty joint is named first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

import agent.schemas as agent_schemas
from agent.config import AgentConfig, ModelConfig, PolicyConfig
from agent.contract.alerts import AlertEvent, ChannelContribution, ModelRef, WindowRef
from agent.contract.errors import ManifestError
from agent.contract.features import FeatureSpec
from agent.contract.manifest import AlertHead, FeatureReference, ModelManifest, Thresholds
from agent.contract.streams import StreamConfig
from agent.policy import explain
from agent.replay import ALERTS_FILE, load_replay_model, replay_files
from agent.streams.attribution import MAX_CONTRIBUTORS, ChannelAttribution
from agent.testing import FunctionScorer
from robotpm_sim.arm import ArmSimulator
from robotpm_sim.faults import Fault
from robotpm_sim.records import header_line
from tests.fleets import small_fleet
from tests.models import SPEC, write_linear_model
from trainer.config import DEFAULT_CHANNELS, FeatureConfig, ModelParams, TrainerConfig
from trainer.run import StageTimer, prepare_windows
from trainer.tasks.failure import train_failure_classifier

BUNDLED = Path(__file__).resolve().parent.parent / "agent" / "models" / "bundled"
FloatArray = np.ndarray

# The tiny model's features: j1_current__mean, j1_current__max, j1_temp__mean, j1_temp__max.
HEALTHY = FeatureReference(
    mean=(0.1, 0.1, 40.0, 40.0),
    std=(0.05, 0.05, 1.0, 1.0),
    quantiles={"p01": (0.0, 0.0, 38.0, 38.0), "p50": (0.1, 0.1, 40.0, 40.0), "p99": (0.2, 0.2, 42.0, 42.0)},
)
"""Healthy: current 0–0.2 A around 0.1, temperature 38–42 °C around 40."""
HEALTHY_MEAN_ONLY = FeatureReference(mean=HEALTHY.mean, std=HEALTHY.std)


def _linear_config(tmp_path: Path) -> AgentConfig:
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    return AgentConfig(
        robot_id="r1",
        state_dir=tmp_path / "state",
        streams=(
            StreamConfig(
                name="arm1",
                directory=logs,
                timestamp_field="ts",
                channels={"J1": "j1_current", "T1": "j1_temp"},
            ),
        ),
        model=ModelConfig(directory=tmp_path / "store", bundled=tmp_path / "bundled"),
        policy=PolicyConfig(on_delay_windows=1, off_delay_windows=1),
    )


def _replay_linear(tmp_path: Path, rows: list[tuple[float, float]]) -> list[dict[str, object]]:
    config = _linear_config(tmp_path)
    log = tmp_path / "log.csv"
    log.write_text("ts,J1,T1\n" + "".join(f"{i}.0,{c},{t}\n" for i, (c, t) in enumerate(rows)))
    model = load_replay_model(config, config.streams[0])
    replay_files(config, config.streams[0], [log], model, tmp_path / "out")
    return [json.loads(line) for line in (tmp_path / "out" / ALERTS_FILE).read_text().splitlines()]


class TestAttributionFollowsTheModel:
    def test_a_channel_the_model_ignores_is_never_named_however_unusual(self, tmp_path: Path) -> None:
        """The model reads only j1_current; j1_temp is far more unusual: z-scores name it, attribution not."""
        write_linear_model(tmp_path / "bundled", watch="j1_current__mean", healthy_reference=HEALTHY)
        # current 1.0 (z = 18, the score goes over critical), temperature 400 °C (z = 360)
        events = _replay_linear(tmp_path, [(0.1, 40.0)] * 8 + [(1.0, 400.0)] * 8 + [(0.1, 40.0)] * 8)
        raised = [e for e in events if e["state"] == "raised"]
        assert len(raised) == 1
        assert raised[0]["top_features"][0]["channel"] == "j1_temp"  # type: ignore[index]
        contributors = raised[0]["contributors"]
        assert [c["channel"] for c in contributors] == ["j1_current"]  # type: ignore[union-attr]
        (current,) = contributors  # type: ignore[misc]
        # the score is the window's mean current: 0.2 moved into the healthy range, 0.1 at the healthy
        # mean (by onnxruntime); the better of the two counts
        assert current["score_without"] == pytest.approx(0.1, abs=1e-6)
        assert current["score_drop"] == pytest.approx(raised[0]["score"] - 0.1, abs=1e-6)  # type: ignore[operator]

    def test_without_healthy_quantiles_a_channel_is_set_to_the_healthy_mean(self, tmp_path: Path) -> None:
        """A healthy reference with only mean and std: the replaced current is its healthy mean, 0.1."""
        write_linear_model(tmp_path / "bundled", healthy_reference=HEALTHY_MEAN_ONLY)
        events = _replay_linear(tmp_path, [(0.1, 40.0)] * 8 + [(1.0, 40.0)] * 8)
        (current,) = events[0]["contributors"]  # type: ignore[misc]
        assert (current["channel"], current["score_without"]) == ("j1_current", pytest.approx(0.1, abs=1e-6))

    def test_the_watched_channel_is_named_even_when_another_is_more_unusual(self, tmp_path: Path) -> None:
        """Roles swapped: it reads j1_temp's max; an extreme current is not named, the temperature is."""
        write_linear_model(
            tmp_path / "bundled", watch="j1_temp__max", scale=0.01, healthy_reference=HEALTHY
        )  # score = temp max / 100: 0.4 healthy (below warning 0.5), 0.9 at 90 °C
        events = _replay_linear(tmp_path, [(0.1, 40.0)] * 8 + [(50.0, 90.0)] * 8 + [(0.1, 40.0)] * 8)
        raised = next(e for e in events if e["state"] == "raised")
        assert raised["top_features"][0]["channel"] == "j1_current"  # type: ignore[index]
        assert [c["channel"] for c in raised["contributors"]] == ["j1_temp"]  # type: ignore[union-attr]

    def test_cleared_events_name_no_contributors(self, tmp_path: Path) -> None:
        """A clear is not driven by any channel: it carries no contributors."""
        write_linear_model(tmp_path / "bundled", healthy_reference=HEALTHY)
        events = _replay_linear(tmp_path, [(0.1, 40.0)] * 8 + [(1.0, 40.0)] * 8 + [(0.1, 40.0)] * 8)
        states = [e["state"] for e in events]
        assert states[0] == "raised"
        assert states[-1] == "cleared"
        assert all(e["contributors"] for e in events[:-1])  # raised and updated name j1_current
        assert events[-1]["contributors"] == []


def _manifest(
    direction: str = "higher_is_worse", healthy: FeatureReference | None = HEALTHY
) -> ModelManifest:
    thresholds = (
        Thresholds(warning=0.5, critical=0.8, clear=0.3)
        if direction == "higher_is_worse"
        else Thresholds(warning=-0.5, critical=-0.8, clear=-0.3)
    )
    return ModelManifest.model_validate(
        {
            "model_id": "hand",
            "version": 1,
            "created": "2026-01-01T00:00:00Z",
            "task": "failure_classifier",
            "feature_spec": SPEC.model_dump(),
            "feature_spec_hash": SPEC.spec_hash(),
            "feature_names": SPEC.feature_names(),
            "onnx": {"input_name": "features", "input_shape": [None, 4], "outputs": ["score"]},
            "heads": [
                AlertHead(
                    output="score",
                    component="joint1",
                    failure_mode="wear",
                    meaning="test",
                    direction=direction,  # type: ignore[arg-type]
                    thresholds=thresholds,
                ).model_dump()
            ],
            "reference": {"mean": [0.0] * 4, "std": [1.0] * 4},
            "healthy_reference": None if healthy is None else healthy.model_dump(),
            "sha256": "0" * 64,
            "length": 1,
        }
    )


def _event(manifest: ModelManifest, index: int, score: float, state: str = "raised") -> AlertEvent:
    return AlertEvent(
        event_id=f"e{index}",
        alert_id="a",
        robot_id="r1",
        site="s",
        stream="arm1",
        component="joint1",
        failure_mode="wear",
        state=state,  # type: ignore[arg-type]
        severity=None if state == "cleared" else "warning",
        score=score,
        threshold=0.5,
        window=WindowRef(index=index, start=0.0, end=1.0, source_file="x", byte_start=0, byte_end=1),
        model=ModelRef(id=manifest.model_id, version=manifest.version),
        agent_version="0",
        replayed=False,
        emitted_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
    )


class _Counting:
    """A linear scoring function that counts its calls and the rows it was given."""

    def __init__(self, weights: list[float], sign: float = 1.0) -> None:
        self.weights = np.asarray(weights)
        self.sign = sign
        self.calls: list[int] = []

    def __call__(self, features: FloatArray) -> Mapping[str, FloatArray]:
        self.calls.append(len(features))
        return {"score": (self.sign * features @ self.weights).reshape(-1, 1)}


class TestAttributionOnTheDevice:
    def test_all_events_of_a_batch_are_attributed_in_one_scorer_call(self) -> None:
        """Three alerting windows: one scorer call for each channel made healthy both ways, for all."""
        manifest = _manifest()
        function = _Counting([1.0, 0.0, 0.01, 0.0])  # current mean, plus a little temperature mean
        scorer = FunctionScorer(manifest, function)
        features = np.array(
            [[0.1, 0.1, 40, 40], [2.0, 2, 41, 41], [0.1, 0.1, 90, 90], [0.3, 0.3, 140, 140]], dtype=np.float64
        )
        index = np.arange(10, 14, dtype=np.int64)
        scores = function(features)["score"][:, 0]
        function.calls.clear()
        events = [_event(manifest, i, float(scores[i - 10])) for i in (11, 12, 13)]
        out = ChannelAttribution(manifest).explain(events, features, index, scorer)
        assert function.calls == [12]  # 3 events × 2 ways × 2 channels
        drops = [[(c.channel, c.score_drop) for c in e.contributors] for e in out]
        assert drops == [
            # current 2.0 → 0.2 (range) or 0.1 (mean): 1.9; 41 °C stays (range) or → 40 (mean): 0.01
            [("j1_current", pytest.approx(1.9)), ("j1_temp", pytest.approx(0.01))],
            # current at the healthy mean either way: no drop; 90 °C → 42 or 40: 0.5
            [("j1_temp", pytest.approx(0.5))],
            # 140 °C → 40: 1.0; current 0.3 → 0.1: 0.2
            [("j1_temp", pytest.approx(1.0)), ("j1_current", pytest.approx(0.2))],
        ]

    def test_a_lower_is_worse_head_ranks_by_how_much_the_score_rises(self) -> None:
        """For a lower-is-worse head the drop is score_without - score (the score gets better upwards)."""
        manifest = _manifest("lower_is_worse")
        function = _Counting([1.0, 0.0, 0.0, 0.0], sign=-1.0)
        scorer = FunctionScorer(manifest, function)
        features = np.array([[2.0, 2, 40, 40]])
        (out,) = ChannelAttribution(manifest).explain(
            [_event(manifest, 0, -2.0)], features, np.array([0], dtype=np.int64), scorer
        )
        assert [(c.channel, c.score_drop) for c in out.contributors] == [("j1_current", pytest.approx(1.9))]

    def test_a_scorer_that_fails_costs_no_event(self) -> None:
        """When the batched call raises, the events go out as the policy made them, and it is counted."""
        manifest = _manifest()

        def broken(features: FloatArray) -> Mapping[str, FloatArray]:
            raise RuntimeError("onnxruntime fell over")

        attribution = ChannelAttribution(manifest)
        events = [_event(manifest, 0, 0.9)]
        out = attribution.explain(
            events, np.ones((1, 4)), np.array([0], dtype=np.int64), FunctionScorer(manifest, broken)
        )
        assert out == events
        assert attribution.failures == 1

    def test_events_of_another_model_or_clears_are_left_alone(self) -> None:
        """An orphan clear of a swapped-out model, and clears, get no scorer call."""
        manifest = _manifest()
        function = _Counting([1.0, 0, 0, 0])
        other = _event(manifest, 0, 0.9).model_copy(update={"model": ModelRef(id="old", version=3)})
        events = [other, _event(manifest, 0, 0.2, state="cleared")]
        out = ChannelAttribution(manifest).explain(
            events, np.ones((1, 4)), np.array([0], dtype=np.int64), FunctionScorer(manifest, function)
        )
        assert out == events
        assert function.calls == []

    def test_at_most_the_top_channels_are_named(self) -> None:
        """With more channels than MAX_CONTRIBUTORS driving the score, only the largest drops are kept."""
        channels = tuple(f"c{i}" for i in range(MAX_CONTRIBUTORS + 3))
        spec = FeatureSpec(channels=channels, window=4, hop=2, statistics=("mean",))
        n = len(channels)
        base = _manifest().model_dump()
        base.update(
            feature_spec=spec.model_dump(),
            feature_spec_hash=spec.spec_hash(),
            feature_names=spec.feature_names(),
            reference={"mean": [0.0] * n, "std": [1.0] * n},
            healthy_reference={"mean": [0.0] * n, "std": [1.0] * n},
            onnx={"input_name": "features", "input_shape": [None, n], "outputs": ["score"]},
        )
        manifest = ModelManifest.model_validate(base)
        function = _Counting([1.0] * n)
        row = np.arange(1, n + 1, dtype=np.float64).reshape(1, -1) / 100
        (out,) = ChannelAttribution(manifest).explain(
            [_event(manifest, 0, float(row.sum()))],
            row,
            np.array([0], dtype=np.int64),
            FunctionScorer(manifest, function),
        )
        assert [c.channel for c in out.contributors] == [
            f"c{i}" for i in range(n - 1, n - 1 - MAX_CONTRIBUTORS, -1)
        ]


class TestAlertSchema:
    def test_an_alert_from_an_agent_not_yet_upgraded_still_parses_and_validates(self) -> None:
        """A 1.0 event (no contributors) parses and validates; a 1.1 event with contributors validates."""
        from jsonschema import Draft202012Validator

        schema = json.loads((Path(agent_schemas.__file__).parent / "alert-event.schema.json").read_text())
        check = Draft202012Validator(schema)
        manifest = _manifest()
        new = json.loads(
            _event(manifest, 3, 0.9)
            .model_copy(
                update={
                    "contributors": (
                        ChannelContribution(channel="j1_current", score_drop=0.5, score_without=0.4),
                    )
                }
            )
            .model_dump_json()
        )
        check.validate(new)
        old = {k: v for k, v in new.items() if k != "contributors"}
        old["schema_version"] = "1.0"
        check.validate(old)
        assert AlertEvent.model_validate(old).contributors == ()


class TestHealthyReference:
    def test_z_scores_are_taken_against_the_healthy_reference(self) -> None:
        """With a healthy reference the z-score of a value uses the healthy mean and std."""
        (top, *_) = explain(_manifest(), np.array([0.2, 0.1, 40.0, 40.0]), top=1)
        assert (top.name, top.z) == ("j1_current__mean", pytest.approx(2.0))

    def test_a_manifest_without_a_healthy_reference_loads_and_explains_against_all_training_data(
        self,
    ) -> None:
        """Old manifests (no healthy_reference) still load; z-scores then use the training reference."""
        manifest = _manifest(healthy=None)
        text = json.loads(manifest.to_json())
        del text["healthy_reference"]
        old = ModelManifest.from_json(json.dumps(text))
        assert old.explanation_reference == old.reference
        (top,) = explain(old, np.array([0.0, 0.0, 3.0, 0.0]), top=1)
        assert (top.name, top.z) == ("j1_temp__mean", pytest.approx(3.0))

    def test_a_healthy_reference_of_the_wrong_length_is_refused(self) -> None:
        """The healthy reference must have one entry per feature, like the training reference."""
        text = json.loads(_manifest().to_json())
        text["healthy_reference"]["mean"] = [0.0]
        with pytest.raises(ManifestError, match="healthy_reference"):
            ModelManifest.from_json(json.dumps(text))


# -- the simulator's fault scenarios, through the agent's pipeline with the bundled model -------------

RATE_HZ = 50.0
SCENARIOS = [
    *(
        (mode, joint, f"j{joint}_")
        for mode in ("bearing_wear", "overheating")
        for joint in (1, 2, 3, 4, 5, 6)
    ),
    ("gripper_wear", 2, "tool_"),
]
"""(fault mode, joint, prefix of the channel that must be named first). A collision has no faulty
joint (every joint stops), so it has no channel to name and is left out of the count."""
ROBOTS = 8
"""Simulated robots (seeds) per scenario: 104 runs, about 140 raise and update events."""


def _bundled_config(tmp_path: Path) -> AgentConfig:
    logs = tmp_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return AgentConfig(
        robot_id="robot-001",
        state_dir=tmp_path / "state",
        streams=(
            StreamConfig(name="arm1", directory=logs, channels=dict(DEFAULT_CHANNELS), timestamp_field="ts"),
        ),
        model=ModelConfig(directory=tmp_path / "store", bundled=BUNDLED),
    )


def test_the_bundled_model_carries_a_healthy_reference() -> None:
    """The bundled manifest was written with the healthy-only statistics the explanations use."""
    manifest = ModelManifest.read(BUNDLED)
    assert manifest.healthy_reference is not None
    assert manifest.healthy_reference != manifest.reference


def test_the_faulty_joint_is_named_first_in_nine_of_ten_raise_and_update_events(tmp_path: Path) -> None:
    """Bearing wear and overheating on every joint, and gripper wear, on eight robots each, replayed."""
    named_first: list[bool] = []
    for seed, (mode, joint, prefix) in enumerate(SCENARIOS * ROBOTS, start=100):
        sim = ArmSimulator(
            "robot-001", rate_hz=RATE_HZ, seed=seed, faults=[Fault(mode, 15.0, 45.0, joint=joint)]
        )
        run = tmp_path / f"{mode}-{joint}-{seed}"
        config = _bundled_config(run)
        log = run / "arm1.csv"
        log.write_bytes(header_line() + sim.lines(0, int(80 * RATE_HZ)))
        model = load_replay_model(config, config.streams[0])
        replay_files(config, config.streams[0], [log], model, run / "out")
        events = [json.loads(line) for line in (run / "out" / ALERTS_FILE).read_text().splitlines()]
        judged = [e for e in events if e["state"] in ("raised", "updated")]
        assert any(e["state"] == "raised" for e in judged), f"{mode} on joint {joint} raised nothing"
        named_first += [
            bool(e["contributors"]) and e["contributors"][0]["channel"].startswith(prefix) for e in judged
        ]
    assert sum(named_first) >= 0.9 * len(named_first), f"{sum(named_first)} of {len(named_first)}"


def test_the_trainer_writes_the_statistics_of_its_healthy_training_windows(tmp_path: Path) -> None:
    """A training run's manifest holds, as healthy_reference, the healthy training windows' statistics."""
    train, test = small_fleet(tmp_path / "fleet", seed=7)
    config = TrainerConfig(
        registry=tmp_path / "models",
        features=FeatureConfig(window=80, hop=40),
        model=ModelParams(n_estimators=4, max_depth=4),
    )
    manifest = train_failure_classifier(config, train, test).manifest
    windows = prepare_windows(config, train, test, StageTimer()).train_windows
    healthy = windows.features[windows.healthy]
    assert 0 < len(healthy) < len(windows)
    assert manifest.healthy_reference is not None
    np.testing.assert_allclose(manifest.healthy_reference.mean, healthy.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(manifest.healthy_reference.std, healthy.std(axis=0), rtol=1e-12)
    np.testing.assert_allclose(
        manifest.reference.mean, windows.features[~windows.ambiguous].mean(axis=0), rtol=1e-12
    )
