"""Probation of newer models (shadow scoring, promotion, rollback) and the model life cycle on MQTT.

Real onnxruntime models from `tests.models`, the in-process daemon of `tests.test_daemon`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from agent.config import AgentConfig
from agent.contract.features import FeatureSpec
from agent.models.lifecycle import PROBATION_FILE
from agent.models.probation import Probation
from agent.models.scorer import OnnxScorer
from agent.testing import ManualClock
from tests.models import write_linear_model
from tests.signing_keys import fleet_keys
from tests.test_daemon import PROFILE, Harness, lines, make_config, write
from trainer.signing import sign_model_dir

SCHEMAS = Path(__file__).parent.parent / "agent" / "schemas"
SCHEMA = json.loads((SCHEMAS / "model-status.schema.json").read_text())
HEARTBEAT_SCHEMA = json.loads((SCHEMAS / "heartbeat.schema.json").read_text())

# PROFILE (40 lines, window 4, hop 2) makes 19 windows, about a third of them over the warning threshold.
PROBATION_WINDOWS = 10


def probation_config(tmp_path: Path, windows: int = PROBATION_WINDOWS) -> AgentConfig:
    config = make_config(tmp_path)
    model = config.model.model_copy(update={"probation_windows": windows})
    return config.model_copy(update={"model": model})


@pytest.fixture(name="config")
def _config(tmp_path: Path) -> AgentConfig:
    return probation_config(tmp_path)


@pytest.fixture(name="harness")
def _harness(config: AgentConfig) -> Iterator[Harness]:
    harness = Harness(config)
    yield harness
    harness.close()


def statuses(harness: Harness) -> list[dict[str, Any]]:
    """Model status messages as sent, each with its ``retain`` flag; every one valid against the schema."""
    out = []
    for message in harness.transport.messages("model"):
        body = json.loads(message.payload)
        Draft202012Validator(SCHEMA).validate(body)
        out.append({**body, "retain": message.retain})
    return out


def heartbeats(harness: Harness) -> list[dict[str, Any]]:
    """Heartbeats as sent, each valid against the schema."""
    out = []
    for message in harness.transport.messages("heartbeat"):
        body = json.loads(message.payload)
        Draft202012Validator(HEARTBEAT_SCHEMA).validate(body)
        out.append(body)
    return out


def retained(harness: Harness) -> list[dict[str, Any]]:
    return [s for s in statuses(harness) if s["retain"]]


def alert_versions(harness: Harness) -> list[int]:
    return [a["model"]["version"] for a in harness.alerts()]  # type: ignore[index]


def on_probation(harness: Harness, version: int) -> bool:
    probation = harness.daemon.probation
    return probation is not None and probation.candidate.manifest.version == version


def into_store(config: AgentConfig, name: str, writer: Callable[[Path], object]) -> Path:
    """Write a model elsewhere and rename it into the store, as the store's contract asks.

    Written in place, the watcher may read a half-written manifest and (rightly) refuse it.
    """
    staging = config.model.directory.parent / f"staging-{name}"
    writer(staging)
    target = config.model.directory / name
    if target.exists():
        shutil.rmtree(target)
    config.model.directory.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return target


def score_on_probation(harness: Harness, writer: Callable[[Path], object], start: int = 0) -> None:
    """Rename the v2 `writer` makes into the store, wait for its probation, then score a profile."""
    into_store(harness.config, "v2", writer)
    harness.settle_until(lambda: on_probation(harness, 2))
    write(harness.config, lines(start, PROFILE))
    harness.settle()


def hot_temperature_model(directory: Path, version: int) -> None:
    """A model scoring j1_temp (40 °C in every line) on current thresholds: a warning on every window."""
    write_linear_model(directory, version=version, watch="j1_temp__mean")


def overflowing_model(directory: Path, version: int) -> None:
    """A model that passes its golden test (inputs ≤ 0.3) but overflows float32 to inf on 40 °C."""
    write_linear_model(directory, version=version, watch="j1_temp__mean", scale=1e38)


class TestPromotion:
    def test_a_good_model_is_shadow_scored_then_promoted_and_alerts_meanwhile_come_from_the_current_one(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """v2 goes on probation (status "probation", not retained) while v1 raises the alerts.

        After the probation windows v2 is the retained "active" model and scores later alerts.
        """
        into_store(config, "v2", lambda d: write_linear_model(d, version=2))
        harness.settle_until(lambda: on_probation(harness, 2))
        assert 1 == harness.daemon.slot.current.manifest.version
        write(config, lines(0, PROFILE))
        harness.settle()
        assert alert_versions(harness), "the fault raised alerts during probation"
        assert {1} == set(alert_versions(harness))
        assert harness.daemon.probation is None
        assert 2 == harness.daemon.slot.current.manifest.version
        write(config, lines(100, PROFILE))
        harness.settle()
        assert 2 == alert_versions(harness)[-1]
        sent = statuses(harness)
        assert [("active", 1, True), ("probation", 2, False), ("active", 2, True)] == [
            (s["state"], s["model"]["version"], s["retain"]) for s in sent
        ]
        assert "10 windows" in sent[1]["detail"]

    def test_a_model_stays_on_probation_until_enough_windows_were_scored(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """Fewer windows than probation_windows do not promote it: 4 windows in, v1 still runs."""
        into_store(config, "v2", lambda d: write_linear_model(d, version=2))
        harness.settle_until(lambda: on_probation(harness, 2))
        write(config, lines(0, [0.1] * 10))  # windows end at samples 4, 6, 8, 10
        harness.settle()
        probation = harness.daemon.probation
        assert probation is not None
        assert 4 == probation.windows
        assert 1 == harness.daemon.slot.current.manifest.version

    def test_probation_windows_0_swaps_a_newer_model_in_at_once(self, tmp_path: Path) -> None:
        """With probation off, v2 is active as soon as it is verified; no probation status is sent."""
        config = probation_config(tmp_path, windows=0)
        with closing(Harness(config)) as harness:
            into_store(config, "v2", lambda d: write_linear_model(d, version=2))
            harness.settle_until(lambda: harness.daemon.slot.current.manifest.version == 2)
            assert harness.daemon.probation is None
            harness.settle(30)  # status telemetry rides on the next checkpoint commit (1 s)
            sent = statuses(harness)
            assert {"active"} == {s["state"] for s in sent}
            assert (2, True) == (sent[-1]["model"]["version"], sent[-1]["retain"])


class TestRollback:
    def test_a_model_scoring_non_finite_values_is_rolled_back_and_the_current_one_keeps_scoring(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """v2 overflows to inf on real data: rolled back with the reason, never offered again, v1 scores."""
        score_on_probation(harness, lambda d: overflowing_model(d, version=2))
        assert harness.daemon.probation is None
        assert 1 == harness.daemon.slot.current.manifest.version
        rolled = [s for s in statuses(harness) if s["state"] == "rolled_back"]
        assert 1 == len(rolled)
        assert (2, False) == (rolled[0]["model"]["version"], rolled[0]["retain"])
        assert "non-finite" in rolled[0]["detail"]
        write(config, lines(100, PROFILE))
        harness.settle(60)
        assert {1} == set(alert_versions(harness))
        assert harness.daemon.slot.poll() is None, "a rolled-back model is not offered again"
        assert [1] == [s["model"]["version"] for s in retained(harness)]

    def test_a_model_that_alerts_on_every_window_is_rolled_back_as_an_alert_storm(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """v2 reaches its warning threshold on 100% of the windows, v1 on about a third: rolled back."""
        score_on_probation(harness, lambda d: hot_temperature_model(d, version=2))
        assert 1 == harness.daemon.slot.current.manifest.version
        rolled = [s for s in statuses(harness) if s["state"] == "rolled_back"]
        assert 1 == len(rolled)
        assert rolled[0]["detail"].startswith("alert storm: warning threshold reached on 100%")
        assert {1} == set(alert_versions(harness))

    def test_a_rolled_back_model_is_offered_again_once_its_files_change(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """Republishing v2 with fixed files puts it on probation again, and this time it is promoted."""
        score_on_probation(harness, lambda d: hot_temperature_model(d, version=2))
        assert harness.daemon.probation is None
        into_store(config, "v2", lambda d: write_linear_model(d, version=2))  # new files, same version
        harness.settle_until(lambda: on_probation(harness, 2))
        write(config, lines(100, PROFILE))
        harness.settle()
        assert 2 == harness.daemon.slot.current.manifest.version
        assert ["active", "probation", "rolled_back", "probation", "active"] == [
            s["state"] for s in statuses(harness)
        ]

    def test_the_heartbeat_names_the_model_on_probation_and_counts_the_rollback(self, tmp_path: Path) -> None:
        """Events on …/model are not retained; the retained heartbeat keeps the tally for late readers."""
        config = probation_config(tmp_path).model_copy(update={"heartbeat_interval_s": 1.0})
        with closing(Harness(config)) as harness:
            into_store(config, "v2", lambda d: hot_temperature_model(d, version=2))
            harness.settle_until(lambda: on_probation(harness, 2))
            harness.clock.advance(2.0)
            harness.settle(1)
            during = heartbeats(harness)[-1]
            assert {"id": "test-linear", "version": 2} == during["model_candidate"]
            assert {"probation": 1} == during["model_events"]
            write(config, lines(0, PROFILE))
            harness.settle()
            harness.clock.advance(2.0)
            harness.settle(1)
            after = heartbeats(harness)[-1]
            assert after["model_candidate"] is None
            assert {"probation": 1, "rolled_back": 1} == after["model_events"]
            assert {"id": "test-linear", "version": 1} == after["model"]


class TestRejectedModels:
    def test_a_model_failing_its_golden_test_is_reported_rejected_and_not_retained(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """A "rejected" status (not retained) names v2 and the golden test; the retained one still says v1."""

        def wrong_golden(directory: Path) -> None:
            write_linear_model(directory, version=2)
            manifest = json.loads((directory / "manifest.json").read_text())
            manifest["golden"][0]["expected"]["score"] = [999.0]
            (directory / "manifest.json").write_text(json.dumps(manifest))

        directory = into_store(config, "v2", wrong_golden)
        harness.settle_until(lambda: any(s["state"] == "rejected" for s in statuses(harness)))
        rejected = [s for s in statuses(harness) if s["state"] == "rejected"]
        assert 1 == len(rejected)
        assert (2, False) == (rejected[0]["model"]["version"], rejected[0]["retain"])
        assert "golden 0" in rejected[0]["detail"]
        assert str(directory) == rejected[0]["source"]
        assert [1] == [s["model"]["version"] for s in retained(harness)]
        assert 1 == harness.daemon.slot.current.manifest.version

    def test_an_unsigned_model_is_reported_rejected_when_signatures_are_required(
        self, tmp_path: Path
    ) -> None:
        """With trusted keys an unsigned v2 is "rejected" (the signature); a signed v3 goes on probation."""
        keys = fleet_keys(tmp_path / "keys")
        config = probation_config(tmp_path)
        config = config.model_copy(
            update={"model": config.model.model_copy(update={"trusted_keys": keys.trusted})}
        )
        with closing(Harness(config)) as harness:
            into_store(config, "v2", lambda d: write_linear_model(d, version=2))
            harness.settle_until(lambda: any(s["state"] == "rejected" for s in statuses(harness)))
            into_store(
                config,
                "v3",
                lambda d: (write_linear_model(d, version=3), sign_model_dir(d, keys.private)),
            )
            harness.settle_until(lambda: on_probation(harness, 3))
            (rejected,) = [s for s in statuses(harness) if s["state"] == "rejected"]
            # An unverified manifest is never parsed: the status names the directory, not the model.
            assert (str(config.model.directory / "v2"), False) == (rejected["source"], rejected["retain"])
            assert "signature" in rejected["detail"]
            assert [1] == [s["model"]["version"] for s in retained(harness)]

    def test_a_model_needing_a_channel_the_streams_lack_is_rejected_before_probation(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """Swapping it in could not work (no such column): it is refused and v1 keeps scoring."""
        spec = FeatureSpec(channels=("j1_current", "j2_current"), window=4, hop=2, statistics=("mean", "max"))
        into_store(config, "v2", lambda d: write_linear_model(d, version=2, spec=spec))
        harness.settle_until(lambda: any(s["state"] == "rejected" for s in statuses(harness)))
        (rejected,) = [s for s in statuses(harness) if s["state"] == "rejected"]
        assert "provides no channels ['j2_current']" in rejected["detail"]
        assert harness.daemon.probation is None
        write(config, lines(0, PROFILE))
        harness.settle()
        assert {1} == set(alert_versions(harness))
        assert harness.daemon.slot.poll() is None

    def test_a_model_with_an_unreadable_manifest_is_reported_by_its_store_directory(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """Without a readable manifest the "rejected" status has no model fields, only source and reason."""

        def unreadable(directory: Path) -> None:
            directory.mkdir(parents=True)
            (directory / "manifest.json").write_text("{not json")

        directory = into_store(config, "v3", unreadable)
        harness.settle_until(lambda: any(s["state"] == "rejected" for s in statuses(harness)))
        (rejected,) = [s for s in statuses(harness) if s["state"] == "rejected"]
        assert "model" not in rejected
        assert str(directory) == rejected["source"]
        assert rejected["detail"]
        assert not rejected["retain"]


class TestRestart:
    def test_a_restart_during_probation_starts_with_the_old_model_and_puts_the_candidate_on_probation_again(
        self, tmp_path: Path
    ) -> None:
        """After a restart v1 runs again and v2 is verified and goes on probation again (not live)."""
        config = probation_config(tmp_path, windows=1000)
        with closing(Harness(config)) as first:
            write(config, lines(0, PROFILE))
            first.settle()
            into_store(config, "v2", lambda d: write_linear_model(d, version=2))
            first.settle_until(lambda: on_probation(first, 2))
        with closing(Harness(config)) as second:
            assert 1 == second.daemon.slot.current.manifest.version
            second.settle_until(lambda: on_probation(second, 2))
            second.settle(30)  # status telemetry rides on the next checkpoint commit (1 s)
            assert [("active", 1), ("probation", 2)] == [
                (s["state"], s["model"]["version"]) for s in statuses(second)
            ]

    def test_a_model_rolled_back_before_a_restart_goes_through_probation_again_after_it(
        self, tmp_path: Path
    ) -> None:
        """Rollbacks are remembered in memory only: after a restart the storm model is judged again."""
        config = probation_config(tmp_path)
        with closing(Harness(config)) as first:
            into_store(config, "v2", lambda d: hot_temperature_model(d, version=2))
            first.settle_until(lambda: on_probation(first, 2))
            write(config, lines(0, PROFILE))
            first.settle()
            assert ["rolled_back"] == [s["state"] for s in statuses(first) if s["state"] == "rolled_back"]
        with closing(Harness(config)) as second:
            assert 1 == second.daemon.slot.current.manifest.version
            second.settle_until(lambda: on_probation(second, 2))
            write(config, lines(100, PROFILE))
            second.settle()
            assert 1 == second.daemon.slot.current.manifest.version
            assert ["active", "probation", "rolled_back"] == [s["state"] for s in statuses(second)]

    def test_a_first_start_loads_the_newest_store_model_without_probation(self, tmp_path: Path) -> None:
        """With no saved state there is no model to compare with: the newest verified one is active."""
        config = probation_config(tmp_path)
        into_store(config, "v2", lambda d: write_linear_model(d, version=2))
        with closing(Harness(config)) as harness:
            harness.settle(3)
            assert 2 == harness.daemon.slot.current.manifest.version
            assert harness.daemon.probation is None

    def test_a_newest_store_model_the_streams_cannot_feed_is_passed_over_at_start(
        self, tmp_path: Path
    ) -> None:
        """No crash loop: v3 needs a channel no stream maps, so the agent starts on v2 and reports v3."""
        config = probation_config(tmp_path)
        into_store(config, "v2", lambda d: write_linear_model(d, version=2))
        spec = FeatureSpec(channels=("j1_current", "j2_current"), window=4, hop=2, statistics=("mean", "max"))
        into_store(config, "v3", lambda d: write_linear_model(d, version=3, spec=spec))
        with closing(Harness(config)) as harness:
            assert 2 == harness.daemon.slot.current.manifest.version
            harness.settle_until(lambda: any(s["state"] == "rejected" for s in statuses(harness)))
            (rejected,) = [s for s in statuses(harness) if s["state"] == "rejected"]
            assert "provides no channels ['j2_current']" in rejected["detail"]
            write(config, lines(0, PROFILE))
            harness.settle()
            assert {2} == set(alert_versions(harness))


def two_models(tmp_path: Path, watch: str = "j1_current__mean") -> tuple[OnnxScorer, OnnxScorer]:
    """Real sessions of v1 and of a v2 scoring `watch`."""
    write_linear_model(tmp_path / "v1", version=1)
    write_linear_model(tmp_path / "v2", version=2, watch=watch)
    return OnnxScorer.load(tmp_path / "v1"), OnnxScorer.load(tmp_path / "v2")


def judge(
    current: OnnxScorer,
    candidate: OnnxScorer,
    *,
    windows: int = 4,
    min_s: float = 0.0,
    max_latency_ms: float = float("inf"),
    clock: Callable[[], float] = time.monotonic,
) -> Probation:
    """A probation of `candidate` against `current`: a 50 % alert-rate bound and a 0.2 margin."""
    return Probation(
        candidate,
        current.manifest,
        windows=windows,
        max_alert_rate=0.5,
        alert_margin=0.2,
        min_s=min_s,
        max_latency_ms=max_latency_ms,
        clock=clock,
    )


class TestProbationJudgement:
    """`Probation` on its own, with real sessions: what fails a candidate and what does not."""

    @pytest.fixture(name="models")
    def _models(self, tmp_path: Path) -> tuple[OnnxScorer, OnnxScorer]:
        return two_models(tmp_path, watch="j1_temp__mean")

    def test_scoring_that_raises_fails_the_candidate_with_the_error(
        self, models: tuple[OnnxScorer, OnnxScorer]
    ) -> None:
        """Features of the wrong width make onnxruntime raise: the failure names the exception."""
        current, candidate = models
        probation = judge(current, candidate)
        probation(np.zeros((2, 3)), {"score": np.zeros((2, 1))})
        assert probation.finished
        assert probation.failure is not None
        assert probation.failure.startswith("scoring raised")

    def test_a_high_rate_close_to_the_current_models_rate_is_not_a_storm(
        self, models: tuple[OnnxScorer, OnnxScorer]
    ) -> None:
        """Candidate 100%, current 100%: above the bound but not above current + margin, so it passes."""
        current, candidate = models
        probation = judge(current, candidate)
        features = np.array([[1.0, 1.0, 40.0, 40.0]] * 4)
        probation(features, current.score(features))
        assert (1.0, 1.0) == probation.rates
        assert probation.finished
        assert probation.failure is None

    def test_the_rate_is_judged_over_all_probation_windows_not_the_first_batch(
        self, models: tuple[OnnxScorer, OnnxScorer]
    ) -> None:
        """A storm in the first batch does not decide before the probation windows are in."""
        current, candidate = models
        probation = judge(current, candidate, windows=8)
        features = np.array([[0.1, 0.1, 40.0, 40.0]] * 4)
        probation(features, current.score(features))
        assert not probation.finished
        probation(features, current.score(features))
        assert probation.failure is not None
        assert "alert storm" in probation.failure


HOP_1 = FeatureSpec(channels=("j1_current", "j1_temp"), window=4, hop=1, statistics=("mean", "max"))
"""Another feature spec than the current model's (hop 1 instead of 2): its windows differ."""


class TestAnotherFeatureSpec:
    def test_an_alert_storm_model_with_another_hop_goes_on_probation_and_is_rolled_back_not_live(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """Another hop no longer skips probation: v2 cuts its own windows from the same lines and storms."""
        into_store(
            config, "v2", lambda d: write_linear_model(d, version=2, spec=HOP_1, watch="j1_temp__mean")
        )
        harness.settle_until(lambda: on_probation(harness, 2))
        probation = harness.daemon.probation
        assert probation is not None
        assert probation.own_spec
        assert 1 == harness.daemon.slot.current.manifest.version
        write(config, lines(0, PROFILE))
        harness.settle()
        assert harness.daemon.probation is None
        assert 1 == harness.daemon.slot.current.manifest.version
        rolled = [s for s in statuses(harness) if s["state"] == "rolled_back"]
        assert 1 == len(rolled)
        assert rolled[0]["detail"].startswith("alert storm: warning threshold reached on 100%")
        assert {1} == set(alert_versions(harness))
        assert "probation" in [s["state"] for s in statuses(harness)]

    def test_a_good_model_with_another_hop_is_promoted_after_scoring_its_own_windows(
        self, harness: Harness, config: AgentConfig
    ) -> None:
        """v2 (hop 1) shadow-scores 37 windows of its own on 40 lines (v1 cuts 19), then goes live."""
        into_store(config, "v2", lambda d: write_linear_model(d, version=2, spec=HOP_1))
        harness.settle_until(lambda: on_probation(harness, 2))
        write(config, lines(0, PROFILE[:12]))  # v2: 9 windows of its own, one short of 10
        harness.settle_until(lambda: harness.daemon.streams[0].counters.lines == 12)
        probation = harness.daemon.probation
        assert probation is not None
        assert 9 == probation.windows
        write(config, lines(12, PROFILE[12:]))
        harness.settle_until(lambda: harness.daemon.slot.current.manifest.version == 2)
        assert harness.daemon.probation is None
        harness.settle(30)  # status telemetry rides on the next checkpoint commit (1 s)
        assert [("active", 1), ("probation", 2), ("active", 2)] == [
            (s["state"], s["model"]["version"]) for s in statuses(harness)
        ]
        assert "its own featurizer" in statuses(harness)[1]["detail"]


class TestProbationAcrossRestarts:
    def test_a_probation_resumes_its_windows_after_a_restart_instead_of_starting_from_zero(
        self, tmp_path: Path
    ) -> None:
        """v2 scored 19 windows before the stop; after the restart its probation goes on from 19."""
        config = probation_config(tmp_path, windows=30)
        with closing(Harness(config)) as first:
            into_store(config, "v2", lambda d: write_linear_model(d, version=2))
            first.settle_until(lambda: on_probation(first, 2))
            write(config, lines(0, PROFILE))
            first.settle()
            probation = first.daemon.probation
            assert probation is not None
            assert 19 == probation.windows
        assert 19 == json.loads((config.state_dir / PROBATION_FILE).read_text())["windows"]
        with closing(Harness(config)) as second:
            assert 1 == second.daemon.slot.current.manifest.version
            second.settle_until(lambda: on_probation(second, 2))
            resumed = second.daemon.probation
            assert resumed is not None
            assert 19 == resumed.windows
            write(config, lines(100, PROFILE))  # 19 more: 38 >= 30, the probation ends
            second.settle_until(lambda: second.daemon.slot.current.manifest.version == 2)
            assert not (config.state_dir / PROBATION_FILE).exists()

    def test_a_saved_probation_of_another_model_is_not_resumed(self, tmp_path: Path) -> None:
        """The saved counts name their model and hash: a changed v2 starts its probation from zero."""
        config = probation_config(tmp_path, windows=30)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        (config.state_dir / PROBATION_FILE).write_text(
            json.dumps(
                {"model": "test-linear@2", "sha256": "0" * 64, "against": "test-linear@1", "windows": 29}
            )
        )
        with closing(Harness(config)) as harness:
            into_store(config, "v2", lambda d: write_linear_model(d, version=2))
            harness.settle_until(lambda: on_probation(harness, 2))
            probation = harness.daemon.probation
            assert probation is not None
            assert 0 == probation.windows


class TestProbationMinimums:
    @pytest.fixture(name="models")
    def _models(self, tmp_path: Path) -> tuple[OnnxScorer, OnnxScorer]:
        return two_models(tmp_path)

    def test_a_probation_lasts_its_minimum_time_however_many_windows_it_scored(
        self, models: tuple[OnnxScorer, OnnxScorer]
    ) -> None:
        """Enough windows after 10 s of a 60 s minimum: not finished; at 60 s it is, and passes."""
        current, candidate = models
        clock = ManualClock()
        probation = judge(current, candidate, min_s=60.0, clock=clock.monotonic)
        features = np.array([[0.1, 0.1, 40.0, 40.0]] * 8)
        clock.advance(10.0)
        probation(features, current.score(features))
        assert 8 == probation.windows
        assert not probation.finished
        clock.advance(50.0)
        assert probation.finished
        assert probation.failure is None

    def test_a_candidate_slower_than_the_latency_bound_fails_its_probation(
        self, models: tuple[OnnxScorer, OnnxScorer]
    ) -> None:
        """A bound of one microsecond per scoring call: no real onnxruntime call meets it."""
        current, candidate = models
        probation = judge(current, candidate, max_latency_ms=1e-3)
        features = np.array([[0.1, 0.1, 40.0, 40.0]] * 4)
        probation(features, current.score(features))
        assert probation.finished
        assert probation.failure is not None
        assert probation.failure.startswith("too slow:")

    def test_a_candidate_within_the_latency_bound_passes(self, models: tuple[OnnxScorer, OnnxScorer]) -> None:
        """The default bound (250 ms per call) holds for a tiny linear model."""
        current, candidate = models
        probation = judge(current, candidate)
        features = np.array([[0.1, 0.1, 40.0, 40.0]] * 4)
        probation(features, current.score(features))
        assert probation.finished
        assert probation.failure is None
