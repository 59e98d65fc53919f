"""Repeated hot swaps: no window is lost, repeated, or scored by a model older than one before it.

Real onnxruntime models from `tests.models`, the in-process daemon of `tests.test_daemon`,
the real store, slot and model watcher thread. The driven test feeds lines in large appends
with hop 1, so the agent scores at least 1,000 windows a second, while another thread renames
verified models into the store; every window the pipeline scores is recorded, and each record
says by itself which window it was (the temperature channel carries the line number) and which
model's weights scored it (each version scales its score by ``1 + version / 1000``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.config import AgentConfig
from agent.contract.features import FeatureSpec
from agent.contract.manifest import ModelManifest
from agent.models.lifecycle import StoreModels
from agent.seams import FloatArray, Scorer
from tests.models import CHANNELS, write_linear_model
from tests.test_daemon import Harness, make_config, write
from tests.test_model_probation import into_store

HOP1 = FeatureSpec(channels=CHANNELS, window=4, hop=1, statistics=("mean", "max"))
NAMES = HOP1.feature_names()
CURRENT_MEAN, TEMP_MAX = (NAMES.index(n) for n in ("j1_current__mean", "j1_temp__max"))
DRIVEN_SWAPS = 8
WINDOWS_PER_MODEL = 1_500
"""Windows each model scores (at least) before the next one is renamed in."""
CHUNK = [0.1] * 230 + [1.0] * 20 + [0.1] * 250
"""One append: healthy, a fault (raises an alert), healthy (clears it)."""
MIN_RATE = 1_000.0


def numbered_lines(start: int, currents: list[float]) -> str:
    """CSV lines whose temperature is the line's number, so each window's features name it."""
    return "".join(f"{start + i}.0,{c},{start + i}.0\n" for i, c in enumerate(currents))


def versioned_model(directory: Path, version: int) -> ModelManifest:
    """A hop-1 model whose score is ``(1 + version / 1000) * j1_current__mean``: its output names it."""
    return write_linear_model(directory, version=version, spec=HOP1, scale=1 + version / 1000)


@dataclass
class Record:
    """One scoring call of the pipeline: the model that served it, the windows and what they scored."""

    version: int
    windows: np.ndarray
    """Window numbers read from the features (the temperature channel is the line number)."""
    encoded: np.ndarray
    """The version each window's score says produced it."""
    at: float


@dataclass
class Recorder:
    """Keeps the pipeline's own scoring calls, not the attribution's counterfactual ones.

    The pipeline calls ``on_scored`` right after its scoring call and before any attribution,
    so a call becomes a record only when ``on_scored`` follows it.
    """

    records: list[Record] = field(default_factory=list)
    _last: tuple[int, FloatArray, FloatArray] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def called(self, version: int, features: FloatArray, scores: FloatArray) -> None:
        self._last = (version, np.array(features, dtype=np.float64), np.array(scores[:, 0]))

    def scored(self) -> None:
        last, self._last = self._last, None
        assert last is not None, "on_scored without a scoring call"
        version, rows, scores = last
        windows = rows[:, TEMP_MAX] - (HOP1.window - 1)
        encoded = np.rint((scores / rows[:, CURRENT_MEAN] - 1) * 1000)  # every current is >= 0.1
        with self._lock:
            self.records.append(Record(version, windows, encoded, time.perf_counter()))

    def windows_of(self, version: int) -> int:
        with self._lock:
            return sum(len(r.windows) for r in self.records if r.version == version)


@dataclass(eq=False)
class RecordingScorer:
    """A real `OnnxScorer` whose every call is told to the `Recorder`."""

    inner: Scorer
    recorder: Recorder

    @property
    def manifest(self) -> ModelManifest:
        return self.inner.manifest

    def score(self, features: FloatArray) -> dict[str, FloatArray]:
        out = dict(self.inner.score(features))
        if len(features):
            self.recorder.called(self.manifest.version, features, out["score"])
        return out


class RecordingModels(StoreModels):
    """The real store, slot and watcher; each scorer handed to the life cycle records its calls."""

    def __init__(self, config: AgentConfig, recorder: Recorder) -> None:
        super().__init__(config.model)
        self._recorder = recorder
        self._wrapped: dict[int, RecordingScorer] = {}

    def _wrap(self, scorer: Scorer) -> RecordingScorer:
        wrapped = self._wrapped.get(id(scorer))
        if wrapped is None or wrapped.inner is not scorer:
            wrapped = self._wrapped[id(scorer)] = RecordingScorer(scorer, self._recorder)
        return wrapped

    @property
    def current(self) -> Scorer:
        return self._wrap(self.slot.current)

    def load_initial(
        self,
        max_version: int | None,
        unfit: Callable[[ModelManifest], str | None],
        running: int | None = None,
    ) -> RecordingScorer:  # type: ignore[override]
        return self._wrap(super().load_initial(max_version, unfit, running))

    def take(self) -> RecordingScorer | None:  # type: ignore[override]
        scorer = super().take()
        return None if scorer is None else self._wrap(scorer)

    def accept(self, scorer: Scorer) -> None:
        super().accept(scorer.inner if isinstance(scorer, RecordingScorer) else scorer)

    def reject(self, scorer: Scorer, reason: str) -> None:
        super().reject(scorer.inner if isinstance(scorer, RecordingScorer) else scorer, reason)


def test_driven_at_a_thousand_windows_a_second_swaps_fail_drop_repeat_and_mix_no_window(
    tmp_path: Path,
) -> None:
    """Hop 1, appends of 500 lines, eight swaps while scoring: every window once, in order, by one model."""
    config = make_config(tmp_path)
    # The probe child (tests/test_model_probe.py) costs ~1 s a model on this machine; off here.
    config = config.model_copy(update={"model": config.model.model_copy(update={"isolate": False})})
    versioned_model(tmp_path / "bundled", 1)  # the same feature spec as every store model
    recorder = Recorder()
    harness = Harness(config, models=RecordingModels(config, recorder))
    pipeline = harness.daemon.streams[0]
    counters = pipeline.counters
    swapper_error: list[BaseException] = []
    done, stop = threading.Event(), threading.Event()

    def swap() -> None:  # renames verified models in while the loop scores
        try:
            for version in range(2, DRIVEN_SWAPS + 2):
                deadline = time.monotonic() + 10
                while recorder.windows_of(version - 1) < WINDOWS_PER_MODEL:
                    assert time.monotonic() < deadline, f"v{version - 1} scored too few windows"
                    if stop.wait(0.002):  # the test ended early
                        return
                into_store(config, f"v{version}", lambda d, v=version: versioned_model(d, v))
        except BaseException as exc:  # handed to the test's thread
            swapper_error.append(exc)
        finally:
            done.set()

    observe = pipeline.on_scored

    def on_scored(seconds: float) -> None:
        recorder.scored()
        if observe is not None:
            observe(seconds)

    pipeline.on_scored = on_scored
    swapper = threading.Thread(target=swap, name="swapper")
    written = 0
    try:
        swapper.start()
        started = time.perf_counter()
        deadline = time.monotonic() + 20
        while not (done.is_set() and recorder.windows_of(DRIVEN_SWAPS + 1) >= WINDOWS_PER_MODEL):
            assert time.monotonic() < deadline, "the swaps did not finish in time"
            if counters.lines == written:  # the last append is read: the next one
                write(config, numbered_lines(written, CHUNK))
                written += len(CHUNK)
            harness.daemon.tick(0.001)
            harness.clock.advance(0.05)
        elapsed = time.perf_counter() - started
        swapper.join(timeout=5)
        assert [] == swapper_error
        while counters.lines < written:  # the rest of the last append
            assert time.monotonic() < deadline, "the last lines were not read"
            harness.daemon.tick(0.001)
            harness.clock.advance(0.05)

        windows = np.concatenate([r.windows for r in recorder.records])
        assert written == counters.lines, "every line read"
        assert 0 == counters.quarantined, "no line failed"
        assert written - (HOP1.window - 1) == counters.windows == len(windows), "hop 1: a window per line"
        assert np.array_equal(np.arange(len(windows)), windows), (
            "every window once, in order: none dropped or repeated"
        )
        for record in recorder.records:
            assert np.all(record.encoded == record.version), (
                f"a batch of v{record.version} scored by one model"
            )
        versions = [r.version for r in recorder.records]
        assert versions == sorted(versions), "versions never go backwards"
        assert list(range(1, DRIVEN_SWAPS + 2)) == sorted(set(versions)), (
            "every model scored, each from a call's start"
        )
        firsts = {r.version: int(r.windows[0]) for r in reversed(recorder.records)}
        lasts = {r.version: int(r.windows[-1]) for r in recorder.records}
        for version in range(2, DRIVEN_SWAPS + 2):
            assert lasts[version - 1] + 1 == firsts[version], "the swap fell between two windows, none lost"

        statuses = [json.loads(m.payload) for m in harness.transport.messages("model")]
        actives = [s["model"]["version"] for s in statuses if s["state"] == "active"]
        assert list(range(1, DRIVEN_SWAPS + 2)) == actives, "each model went live once, in order"
        assert {"active"} == {s["state"] for s in statuses}, "none refused or rolled back along the way"
        by_window = dict(
            zip(
                windows.tolist(),
                np.concatenate([np.full(len(r.windows), r.version) for r in recorder.records]).tolist(),
                strict=True,
            )
        )
        events = [(a["window"]["index"], a["state"], a["model"]["version"]) for a in harness.alerts()]  # type: ignore[index]
        assert len(events) >= 2 * (written // len(CHUNK)) - 2, "each append raises and clears"
        assert len(events) == len({(i, s) for i, s, _ in events}), "no event repeated"
        assert all(by_window[index] == version for index, _, version in events), (
            "each event names its window's model"
        )

        rate = sum(r.windows.size for r in recorder.records if r.at <= started + elapsed) / elapsed
        print(f"driven swaps: {rate:.0f} windows/s")  # the figure, with pytest -s
        assert rate >= MIN_RATE, f"scored {rate:.0f} windows/s during the swaps"
    finally:
        stop.set()
        swapper.join(timeout=5)
        harness.close()
