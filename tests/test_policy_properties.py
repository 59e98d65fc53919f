"""Properties of the alert policy for any score sequence (Hypothesis)."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.contract.alerts import AlertEvent
from tests.test_policy import make_policy, run

scores_st = st.lists(
    st.one_of(st.floats(min_value=0.0, max_value=1.0), st.just(float("nan"))), min_size=0, max_size=120
)
delays_st = st.tuples(st.integers(1, 4), st.integers(1, 4))


def _check_life_cycle(events: list[AlertEvent]) -> None:
    open_id: str | None = None
    severity: str | None = None
    for event in events:
        if event.state == "raised":
            assert open_id is None, "a second raise while an alert is open"
            open_id, severity = event.event_id, event.severity
            assert event.alert_id == event.event_id
        elif event.state == "updated":
            assert open_id is not None, "an update without an open alert"
            assert event.severity != severity, "an update that changes nothing"
            assert event.alert_id == open_id
            severity = event.severity
        else:
            assert open_id is not None, "a clear without an open alert"
            assert (event.alert_id, event.severity) == (open_id, None)
            open_id, severity = None, None


@settings(max_examples=200, deadline=None)
@given(scores=scores_st, delays=delays_st)
def test_every_sequence_follows_raised_updated_cleared(scores: list[float], delays: tuple[int, int]) -> None:
    """For any scores: raise opens, updates change severity, clear closes; ids are unique."""
    on, off = delays
    events = run(make_policy(on_delay_windows=on, off_delay_windows=off), scores)
    _check_life_cycle(events)
    assert len({e.event_id for e in events}) == len(events)


@settings(max_examples=200, deadline=None)
@given(scores=scores_st, delays=delays_st)
def test_no_alert_storm_whatever_the_input(scores: list[float], delays: tuple[int, int]) -> None:
    """Each event needs a run of at least min(on, off) windows, so events ≤ n / min(on, off)."""
    on, off = delays
    events = run(make_policy(on_delay_windows=on, off_delay_windows=off), scores)
    assert len(events) <= math.ceil(len(scores) / min(on, off))


@settings(max_examples=100, deadline=None)
@given(scores=scores_st, cut=st.integers(0, 120), delays=delays_st)
def test_restoring_saved_state_anywhere_gives_the_same_events(
    scores: list[float], cut: int, delays: tuple[int, int]
) -> None:
    """Stopping after any window and resuming from the JSON state repeats no event and loses none."""
    on, off = delays
    cut = min(cut, len(scores))
    whole = run(make_policy(on_delay_windows=on, off_delay_windows=off), scores)
    first = make_policy(on_delay_windows=on, off_delay_windows=off)
    a = run(first, scores[:cut])
    second = make_policy(on_delay_windows=on, off_delay_windows=off)
    second.restore(json.loads(json.dumps(first.state())))
    b = run(second, scores[cut:], start=cut)
    assert [e.event_id for e in whole] == [e.event_id for e in a + b]


@settings(max_examples=100, deadline=None)
@given(scores=scores_st, sizes=st.lists(st.integers(1, 10), min_size=1, max_size=30))
def test_batching_does_not_change_the_events(scores: list[float], sizes: list[int]) -> None:
    """Evaluating windows in batches of any size gives the same events as one batch."""
    whole = run(make_policy(), scores)
    policy = make_policy()
    pieces: list[AlertEvent] = []
    start, i = 0, 0
    while start < len(scores):
        size = sizes[i % len(sizes)]
        pieces += run(policy, scores[start : start + size], start=start)
        start += size
        i += 1
    assert [e.event_id for e in whole] == [e.event_id for e in pieces]
    assert all(np.isfinite(f.z) for e in pieces for f in e.top_features)
