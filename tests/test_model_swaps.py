"""Repeated hot swaps: no window is lost, repeated, or scored by a model older than one before it.

Real onnxruntime models from `tests.models`, the in-process daemon of `tests.test_daemon`.
Speed is not measured here (bench/ does that); this checks every alert event's window index
and model version.
"""

from __future__ import annotations

from pathlib import Path

from tests.models import write_linear_model
from tests.test_daemon import PROFILE, Harness, lines, make_config, write
from tests.test_model_probation import into_store

SWAPS = 5


def test_repeated_swaps_lose_repeat_and_mix_no_window(tmp_path: Path) -> None:
    """Six models in turn while lines keep coming: every alert event's window once, versions only go up."""
    config = make_config(tmp_path)  # probation off: each verified model swaps in at once
    harness = Harness(config)
    try:
        start = 0
        for version in range(2, SWAPS + 2):
            write(config, lines(start, PROFILE))
            start += len(PROFILE)
            harness.settle()
            into_store(config, f"v{version}", lambda d, v=version: write_linear_model(d, version=v))
            harness.settle_until(lambda v=version: harness.daemon.slot.current.manifest.version == v)
        write(config, lines(start, PROFILE))
        start += len(PROFILE)
        harness.settle()
        counters = harness.daemon.streams[0].counters
        assert start == counters.lines
        assert (start - 4) // 2 + 1 == counters.windows, "window 4, hop 2: the grid went on across swaps"
        events = [(a["window"]["index"], a["state"], a["model"]["version"]) for a in harness.alerts()]  # type: ignore[index]
        assert len(events) >= 2 * (SWAPS + 1), "each chunk raises and clears"
        keys = [(index, state) for index, state, _ in events]
        assert len(keys) == len(set(keys)), "no event repeated"
        by_index = sorted(events)
        versions = [version for _, _, version in by_index]
        assert versions == sorted(versions), "a window never scored by an older model than an earlier window"
        assert set(range(2, SWAPS + 2)) <= set(versions), "every swapped-in model scored"
        assert SWAPS + 1 == versions[-1]
    finally:
        harness.close()
