"""The alert policy: on/off delays, hysteresis, severities, rate limits, explanations, replay and swaps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np
import pytest

from agent.config import PolicyConfig
from agent.contract.alerts import AlertEvent, WindowRef, derive_event_id
from agent.contract.features import FeatureSpec
from agent.contract.manifest import (
    AlertHead,
    FeatureReference,
    ModelManifest,
    OnnxInterface,
    Thresholds,
)
from agent.policy import AlertPolicy, explain
from agent.testing import ManualClock

CHANNELS = ("j1_current", "j1_temp", "j2_current")
STATS = ("mean", "std")


def make_manifest(
    *,
    version: int = 1,
    heads: Sequence[tuple[str, str, str]] = (("joint1", "bearing_wear", "higher_is_worse"),),
    warning: float = 0.6,
    critical: float = 0.8,
    clear: float = 0.4,
) -> ModelManifest:
    """A small valid manifest: one output column per head."""
    spec = FeatureSpec(channels=CHANNELS, window=8, hop=8, statistics=STATS)
    n = spec.n_features
    built = []
    for column, (component, mode, direction) in enumerate(heads):
        if direction == "higher_is_worse":
            t = Thresholds(warning=warning, critical=critical, clear=clear)
        else:
            t = Thresholds(warning=1 - warning, critical=1 - critical, clear=1 - clear)
        built.append(
            AlertHead(
                output="scores",
                column=column,
                component=component,
                failure_mode=mode,
                meaning="probability of failure within 24 h",
                direction=direction,  # type: ignore[arg-type]
                thresholds=t,
            )
        )
    return ModelManifest(
        model_id="test-model",
        version=version,
        created=datetime(2026, 1, 1, tzinfo=timezone.utc),
        task="failure_classifier",
        feature_spec=spec,
        feature_spec_hash=spec.spec_hash(),
        feature_names=spec.feature_names(),
        onnx=OnnxInterface(input_name="x", input_shape=(None, n), outputs=("scores",)),
        heads=tuple(built),
        reference=FeatureReference(mean=tuple(float(i) for i in range(n)), std=(1.0,) * n),
        sha256="0" * 64,
        length=1,
    )


def windows(n: int, start: int = 0, seconds_per_window: float = 1.0) -> list[WindowRef]:
    return [
        WindowRef(
            index=i,
            start=1_700_000_000.0 + i * seconds_per_window,
            end=1_700_000_000.0 + (i + 1) * seconds_per_window,
            source_file="/logs/arm1/current.csv",
            byte_start=i * 100,
            byte_end=(i + 1) * 100,
        )
        for i in range(start, start + n)
    ]


def make_policy(manifest: ModelManifest | None = None, **config: object) -> AlertPolicy:
    return AlertPolicy(
        manifest or make_manifest(),
        PolicyConfig.model_validate({"on_delay_windows": 2, "off_delay_windows": 3, **config}),
        robot_id="r1",
        site="s1",
        stream="arm1",
        agent_version="0.1.0",
        clock=ManualClock(),
    )


def run(policy: AlertPolicy, scores: Sequence[float], start: int = 0, **kw: object) -> list[AlertEvent]:
    n = len(scores)
    manifest = policy.manifest
    k = len(manifest.heads)
    array = np.repeat(np.asarray(scores, dtype=np.float64).reshape(-1, 1), k, axis=1)
    features = np.tile(np.asarray(manifest.reference.mean), (n, 1))
    return policy.evaluate({"scores": array}, windows(n, start, **kw), features, replayed=False)  # type: ignore[arg-type]


def trace(events: Sequence[AlertEvent]) -> list[tuple[int, str, str | None]]:
    return [(e.window.index, e.state, e.severity) for e in events]


class TestLifeCycle:
    @pytest.mark.parametrize(
        ("on_delay", "off_delay", "scores", "expected"),
        [
            # k consecutive windows over warning raise; the run is reset by one window under.
            (2, 3, [0.7, 0.5, 0.7, 0.7], [(3, "raised", "warning")]),
            (1, 1, [0.7, 0.3], [(0, "raised", "warning"), (1, "cleared", None)]),
            (3, 1, [0.7, 0.7, 0.5, 0.7, 0.7, 0.7], [(5, "raised", "warning")]),
            # severity of the raise is that of the window completing the run
            (2, 3, [0.7, 0.9], [(1, "raised", "critical")]),
            # hysteresis: between clear (0.4) and warning (0.6) nothing clears
            (1, 2, [0.7, 0.5, 0.5, 0.5, 0.5], [(0, "raised", "warning")]),
            # the off-delay needs m consecutive windows strictly under clear
            (1, 3, [0.7, 0.3, 0.3, 0.5, 0.3, 0.3, 0.3], [(0, "raised", "warning"), (6, "cleared", None)]),
            (1, 2, [0.7, 0.4, 0.4, 0.39, 0.39], [(0, "raised", "warning"), (4, "cleared", None)]),
            # escalation and de-escalation take the on-delay too
            (
                2,
                2,
                [0.7, 0.7, 0.9, 0.9, 0.7, 0.7, 0.1, 0.1],
                [
                    (1, "raised", "warning"),
                    (3, "updated", "critical"),
                    (5, "updated", "warning"),
                    (7, "cleared", None),
                ],
            ),
            # a single critical spike inside an open warning does not update
            (2, 2, [0.7, 0.7, 0.9, 0.7, 0.9, 0.7], [(1, "raised", "warning")]),
        ],
    )
    def test_on_delay_hysteresis_and_off_delay(
        self, on_delay: int, off_delay: int, scores: list[float], expected: list[tuple[int, str, str | None]]
    ) -> None:
        """Events follow the on-delay, the severity thresholds and the off-delay under `clear`."""
        policy = make_policy(on_delay_windows=on_delay, off_delay_windows=off_delay)
        assert expected == trace(run(policy, scores))

    @pytest.mark.parametrize(
        ("scores", "expected"),
        [
            ([0.3, 0.3], [(1, "raised", "warning")]),
            (
                [0.1, 0.1, 0.3, 0.3, 0.5, 0.7, 0.7],
                [(1, "raised", "critical"), (3, "updated", "warning"), (6, "cleared", None)],
            ),
        ],
    )
    def test_lower_is_worse_heads_mirror_the_thresholds(
        self, scores: list[float], expected: list[tuple[int, str, str | None]]
    ) -> None:
        """For lower_is_worse heads a low score alerts and a high one clears."""
        manifest = make_manifest(heads=(("joint1", "health", "lower_is_worse"),))
        policy = make_policy(manifest, on_delay_windows=2, off_delay_windows=2)
        assert expected == trace(run(policy, scores))

    def test_all_events_of_one_episode_share_the_alert_id_of_the_raise(self) -> None:
        """Raised → updated → cleared carry the raise's event_id as alert_id."""
        events = run(make_policy(on_delay_windows=1, off_delay_windows=1), [0.7, 0.9, 0.1])
        assert ["raised", "updated", "cleared"] == [e.state for e in events]
        assert {events[0].event_id} == {e.alert_id for e in events}
        assert 3 == len({e.event_id for e in events})

    def test_one_open_alert_per_component_and_failure_mode(self) -> None:
        """A long run over threshold raises once; two heads raise independently."""
        manifest = make_manifest(
            heads=(("joint1", "wear", "higher_is_worse"), ("joint2", "wear", "higher_is_worse"))
        )
        events = run(make_policy(manifest, on_delay_windows=1), [0.7] * 50)
        assert [("joint1", "raised"), ("joint2", "raised")] == [(e.component, e.state) for e in events]

    def test_non_finite_scores_reset_the_runs(self) -> None:
        """A NaN score is no evidence: the on-delay starts over."""
        policy = make_policy(on_delay_windows=2)
        assert [] == run(policy, [0.7, float("nan"), 0.7])

    def test_event_fields_describe_the_window_model_and_threshold(self) -> None:
        """An event names robot, stream, head, score, threshold, window, model and agent version."""
        event = run(make_policy(on_delay_windows=1), [0.9])[0]
        assert ("r1", "s1", "arm1") == (event.robot_id, event.site, event.stream)
        assert ("joint1", "bearing_wear", 0.9, 0.8) == (
            event.component,
            event.failure_mode,
            event.score,
            event.threshold,
        )
        assert (0, "/logs/arm1/current.csv", 0, 100) == (
            event.window.index,
            event.window.source_file,
            event.window.byte_start,
            event.window.byte_end,
        )
        assert ("test-model", 1, "0.1.0", False) == (
            event.model.id,
            event.model.version,
            event.agent_version,
            event.replayed,
        )
        expected_id = derive_event_id("r1", "arm1", "test-model@1", "joint1", "bearing_wear", 0, "raised")
        assert expected_id == event.event_id


class TestAntiFlapping:
    def test_flapping_scores_produce_no_alert_storm(self) -> None:
        """Scores alternating across every threshold raise once and never clear or update."""
        rng = np.random.default_rng(7)
        scores = [0.95 if i % 2 else 0.35 for i in range(1000)]
        scores = [s + float(rng.normal(0, 0.01)) for s in scores]
        events = run(make_policy(on_delay_windows=2, off_delay_windows=3), scores)
        assert [] == events
        events = run(make_policy(on_delay_windows=1, off_delay_windows=3), scores)
        assert 1 == len(events)

    def test_rate_limit_caps_events_per_minute_and_counts_the_rest(self) -> None:
        """Beyond max_events_per_minute, events are suppressed, counted, and retried later."""
        manifest = make_manifest(heads=tuple((f"j{i}", "wear", "higher_is_worse") for i in range(10)))
        policy = make_policy(manifest, on_delay_windows=1, max_events_per_minute=4)
        first = run(policy, [0.7])
        assert 4 == len(first)
        assert 6 == policy.counters()["suppressed"]["rate_limit_raised"]
        # 61 s later (data time) the budget is back and the suppressed raises go out.
        later = run(policy, [0.7], start=61)
        assert 4 == len(later)
        assert {e.component for e in first}.isdisjoint({e.component for e in later})

    def test_min_update_interval_limits_severity_changes(self) -> None:
        """Severity updates closer together than min_update_interval_s (data time) wait."""
        policy = make_policy(on_delay_windows=1, off_delay_windows=5, min_update_interval_s=10)
        events = run(policy, [0.7, 0.9, 0.9, 0.7, 0.7] + [0.9] * 10)
        assert [(0, "raised", "warning"), (10, "updated", "critical")] == trace(events)


class TestExplanation:
    def test_top_features_are_the_largest_z_scores_against_the_reference(self) -> None:
        """Top features are ranked by |z| = |value - mean| / std from the manifest."""
        manifest = make_manifest()
        row = np.asarray(manifest.reference.mean, dtype=np.float64).copy()
        row[4] += 5.0  # j2_current__mean, z = +5
        row[1] -= 3.0  # j1_current__std, z = -3
        top = explain(manifest, row, 2)
        assert [
            ("j2_current__mean", "j2_current", "mean", 5.0),
            ("j1_current__std", "j1_current", "std", -3.0),
        ] == [(f.name, f.channel, f.statistic, f.z) for f in top]
        assert row[4] == top[0].value

    def test_zero_std_and_nan_values_keep_the_explanation_json_safe(self) -> None:
        """A flat training feature gives a finite z; NaN values are skipped."""
        spec_manifest = make_manifest()
        data = spec_manifest.model_dump()
        data["reference"]["std"] = (0.0, *tuple(data["reference"]["std"][1:]))
        manifest = ModelManifest.model_validate(data)
        row = np.asarray(manifest.reference.mean, dtype=np.float64).copy()
        row[0] += 1.0
        row[2] = float("nan")
        top = explain(manifest, row, 6)
        assert "j1_temp__mean" not in {f.name for f in top}
        assert 1e6 == top[0].z
        json.loads(
            AlertEvent.model_validate(
                run(make_policy(on_delay_windows=1), [0.9])[0].model_dump()
            ).model_dump_json()
        )

    def test_alerts_carry_the_configured_number_of_top_features(self) -> None:
        """Each event carries `top_features` contributions."""
        event = run(make_policy(on_delay_windows=1, top_features=3), [0.9])[0]
        assert 3 == len(event.top_features)


class TestReplayAndState:
    def test_a_restored_policy_continues_exactly_like_an_uninterrupted_one(self) -> None:
        """Saving state at any window and restoring it yields the same events and ids."""
        scores = [0.7, 0.7, 0.9, 0.9, 0.5, 0.3, 0.3, 0.3, 0.7, 0.7, 0.7, 0.1, 0.1, 0.1]
        reference = run(make_policy(), scores)
        for cut in range(len(scores)):
            first = make_policy()
            a = run(first, scores[:cut])
            saved = json.loads(json.dumps(first.state()))
            second = make_policy()
            second.restore(saved)
            b = run(second, scores[cut:], start=cut)
            assert [e.event_id for e in reference] == [e.event_id for e in a + b]

    def test_emitted_at_comes_from_the_clock_and_is_not_part_of_the_id(self) -> None:
        """The same input at another time yields the same event ids."""
        one, two = make_policy(on_delay_windows=1), make_policy(on_delay_windows=1)
        two._clock.advance(3600)  # type: ignore[attr-defined]
        a, b = run(one, [0.9]), run(two, [0.9])
        assert a[0].event_id == b[0].event_id
        assert a[0].emitted_at != b[0].emitted_at

    def test_hot_swap_keeps_open_alerts_of_surviving_heads_and_clears_the_others(self) -> None:
        """After use_model, kept heads stay open; removed heads get one cleared event."""
        old = make_manifest(
            heads=(("joint1", "wear", "higher_is_worse"), ("joint2", "wear", "higher_is_worse"))
        )
        new = make_manifest(version=2, heads=(("joint1", "wear", "higher_is_worse"),))
        policy = make_policy(old, on_delay_windows=1, off_delay_windows=1)
        raised = run(policy, [0.7])
        policy.use_model(new)
        after = run(policy, [0.7], start=1)
        assert [("joint2", "cleared")] == [(e.component, e.state) for e in after]
        assert raised[1].alert_id == after[0].alert_id
        assert 1 == after[0].model.version
        assert {"joint1/wear": "warning"} == policy.open_alerts()
        cleared = run(policy, [0.1], start=2)
        assert [("joint1", "cleared", 2)] == [(e.component, e.state, e.model.version) for e in cleared]
        assert raised[0].alert_id == cleared[0].alert_id
