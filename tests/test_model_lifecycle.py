"""The model life cycle driven by hand: the daemon on in-memory twins only (`agent.testing`).

No onnxruntime session, no broker and no model store: the models are `FunctionScorer`s
under real manifests, handed out by an `InMemoryModels` source; time is a `ManualClock`.
The same life cycle on real ONNX models and a real store is tested in
tests/test_model_probation.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import AgentConfig
from agent.contract.manifest import ModelManifest
from agent.contract.topics import model_announcements
from agent.seams import FloatArray
from agent.testing import FunctionScorer, InMemoryModels
from tests.models import SPEC, write_linear_model
from tests.test_daemon import PROFILE, Harness, lines, make_config, write

CURRENT_MEAN = SPEC.feature_names().index("j1_current__mean")


def manifest(tmp_path: Path, version: int) -> ModelManifest:
    """A real manifest (the one the tiny linear test model carries), for a function to stand behind."""
    return write_linear_model(tmp_path / "manifests" / f"v{version}", version=version)


def current_mean(features: FloatArray) -> dict[str, FloatArray]:
    """What the linear test model computes: the window's mean current, one head."""
    return {"score": features[:, CURRENT_MEAN : CURRENT_MEAN + 1].astype(np.float64)}


def broken(features: FloatArray) -> dict[str, FloatArray]:
    raise RuntimeError("the candidate's kernel crashed")


def with_probation(config: AgentConfig, windows: int) -> AgentConfig:
    return config.model_copy(update={"model": config.model.model_copy(update={"probation_windows": windows})})


class Twins:
    """A daemon whose every seam is a twin, with the model source kept at hand."""

    def __init__(self, tmp_path: Path, config: AgentConfig) -> None:
        self.tmp_path = tmp_path
        self.source = InMemoryModels(FunctionScorer(manifest(tmp_path, 1), current_mean))
        self.harness = Harness(config, models=self.source)

    def scorer(self, version: int, function: Callable[[FloatArray], dict[str, FloatArray]]) -> FunctionScorer:
        return FunctionScorer(manifest(self.tmp_path, version), function)

    def on_probation(
        self, version: int, function: Callable[[FloatArray], dict[str, FloatArray]]
    ) -> FunctionScorer:
        """Offer a candidate of `version` scoring with `function`; return it once it is on probation."""
        candidate = self.scorer(version, function)
        self.source.offer(candidate)
        self.harness.settle(2)
        probation = self.harness.daemon.probation
        assert probation is not None
        assert probation.candidate is candidate
        return candidate

    def feed(self, start: int = 0) -> None:
        """One healthy-fault-healthy profile of log lines from line `start`, scored to the end."""
        write(self.harness.config, lines(start, PROFILE))
        self.harness.settle()

    def model_messages(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.harness.transport.messages("model")]

    def alert_versions(self) -> list[int]:
        return [a["model"]["version"] for a in self.harness.alerts()]  # type: ignore[index]


@pytest.fixture(name="twins")
def _twins(tmp_path: Path) -> Iterator[Twins]:
    twins = Twins(tmp_path, with_probation(make_config(tmp_path), 10))
    yield twins
    twins.harness.close()


class TestTheDaemonOnTwins:
    def test_a_plain_function_scores_the_log_lines_and_raises_then_clears_one_alert(
        self, twins: Twins, tmp_path: Path
    ) -> None:
        """The function under the v1 manifest raises the fault's alert and clears it, as ONNX v1 does."""
        write(twins.harness.config, lines(0, PROFILE))
        twins.harness.settle()
        states = [a["state"] for a in twins.harness.alerts()]
        assert "raised" == states[0]
        assert "cleared" == states[-1]
        assert {1} == set(twins.alert_versions())
        assert twins.source.started

    def test_the_source_is_stopped_with_the_daemon(self, tmp_path: Path) -> None:
        """Shutdown stops the model source (no thread of it outlives the agent)."""
        twins = Twins(tmp_path, make_config(tmp_path))
        twins.harness.close()
        assert twins.source.stopped


class TestProbationOnTwins:
    def test_a_candidate_whose_scoring_raises_is_rolled_back_and_never_drives_an_alert(
        self, twins: Twins
    ) -> None:
        """v2's function raises on its first shadow batch: rejected with the reason, v1 keeps alerting."""
        candidate = twins.on_probation(2, broken)
        twins.feed()
        assert twins.harness.daemon.probation is None
        [(rejected, reason)] = twins.source.rejected
        assert rejected is candidate
        assert "RuntimeError" in reason
        assert "kernel crashed" in reason
        assert [] == twins.source.accepted
        assert twins.alert_versions()
        assert {1} == set(twins.alert_versions())
        states = [(m["state"], m["model"]["version"]) for m in twins.model_messages()]
        assert ("rolled_back", 2) in states

    def test_a_candidate_that_behaves_through_its_probation_becomes_current_and_scores_later_alerts(
        self, twins: Twins
    ) -> None:
        """After 10 shadow-scored windows v2 is accepted by the source; the next fault's alerts name v2."""
        candidate = twins.on_probation(2, current_mean)
        assert [] == twins.source.accepted, "not before its probation windows"
        twins.feed()
        assert [candidate] == twins.source.accepted
        assert twins.source.current is candidate
        twins.feed(100)
        assert 2 == twins.alert_versions()[-1]
        assert [] == twins.source.rejected

    def test_a_newer_candidate_supersedes_the_one_on_probation(self, twins: Twins) -> None:
        """v3 offered while v2 is on probation takes its place; v2 is neither accepted nor rejected."""
        twins.on_probation(2, current_mean)
        v3 = twins.on_probation(3, current_mean)
        twins.feed()
        assert [v3] == twins.source.accepted
        assert [] == twins.source.rejected

    def test_a_refusal_by_the_source_is_published_as_a_rejected_model_status_naming_why(
        self, twins: Twins, tmp_path: Path
    ) -> None:
        """A model the source refused on its own (a bad signature) is reported, with where it came from."""
        twins.source.refuse(tmp_path / "store" / "v7", "bad signature", manifest(tmp_path, 7))
        twins.harness.settle()  # telemetry rides on the next checkpoint
        [event] = [m for m in twins.model_messages() if m["state"] == "rejected"]
        assert "bad signature" == event["detail"]
        assert 7 == event["model"]["version"]
        assert str(tmp_path / "store" / "v7") == event["source"]


class TestModelChannelOnTwins:
    def test_the_fetcher_is_subscribed_to_the_channel_on_the_transport_and_hears_its_payloads(
        self, tmp_path: Path
    ) -> None:
        """With a channel, the transport carries the announcements to the fetcher; garbage is refused."""
        base = make_config(tmp_path)
        config = base.model_copy(update={"model": base.model.model_copy(update={"channel": "stable"})})
        twins = Twins(tmp_path, config)
        try:
            fetcher = twins.harness.daemon.model_fetcher
            assert fetcher is not None
            assert twins.harness.transport.deliver(model_announcements("stable"), b"{not json")
            deadline = time.monotonic() + 10.0
            while not fetcher.results():
                assert time.monotonic() < deadline, "the fetcher never handled the payload"
                time.sleep(0.01)
            [result] = fetcher.results()
            assert ("refused", True) == (result.outcome, "not a model announcement" in result.detail)
        finally:
            twins.harness.close()
