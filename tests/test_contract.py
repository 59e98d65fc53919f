"""The edge contract: features, records, manifest, alerts and topics behave as agent and trainer agree."""

from __future__ import annotations

import hashlib
import itertools
import json
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agent.contract import (
    AlertEvent,
    FeatureSpec,
    ModelRef,
    RecordParser,
    RecordSchema,
    RobotTopics,
    StreamingFeaturizer,
    WindowRef,
    batch_features,
    derive_event_id,
    format_csv_line,
    parse_timestamp,
    subscription,
)
from agent.contract.errors import RecordError
from agent.contract.features import ALL_STATISTICS
from agent.contract.sampling import RateMonitor, Sampling, StreamingResampler, measure_rate, resample
from agent.contract.topics import parse_robot_topic

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def spec_and_samples(draw: st.DrawFn) -> tuple[FeatureSpec, np.ndarray, list[int]]:
    n_channels = draw(st.integers(1, 4))
    window = draw(st.integers(2, 20))
    hop = draw(st.integers(1, 25))
    stats = draw(
        st.lists(st.sampled_from(ALL_STATISTICS), min_size=1, max_size=len(ALL_STATISTICS), unique=True)
    )
    spec = FeatureSpec(
        channels=tuple(f"c{i}" for i in range(n_channels)), window=window, hop=hop, statistics=tuple(stats)
    )
    n = draw(st.integers(0, 120))
    values = draw(arrays(np.float64, (n, n_channels), elements=finite))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    return spec, values, cuts


@st.composite
def timed_spec_and_samples(draw: st.DrawFn) -> tuple[FeatureSpec, np.ndarray, list[int]]:
    rate = draw(st.floats(0.5, 100.0))
    window_s = draw(st.floats(2.0 / rate, 30.0 / rate))
    hop_s = draw(st.floats(0.6 / rate, 20.0 / rate))
    spec = FeatureSpec(
        channels=("c0", "c1"),
        window_s=window_s,
        hop_s=hop_s,
        sampling=Sampling(rate_hz=rate),
        statistics=("mean", "std", "slope", "last"),
    )
    n = draw(st.integers(0, 120))
    values = draw(arrays(np.float64, (n, 2), elements=finite))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    return spec, values, cuts


class TestFeatures:
    @settings(max_examples=150, deadline=None)
    @given(spec_and_samples())
    def test_streaming_features_equal_batch_features_for_any_chunking(
        self, case: tuple[FeatureSpec, np.ndarray, list[int]]
    ) -> None:
        """Feeding samples in arbitrary chunks yields the batch windows, values equal to float tolerance."""
        spec, values, cuts = case
        expected, ends = batch_features(values, spec)
        featurizer = StreamingFeaturizer(spec)
        got, index = [], []
        for chunk in np.split(values, cuts):
            done = featurizer.push(chunk)
            got.append(done.features)
            index.extend(done.index.tolist())
        streamed = np.concatenate(got) if got else np.empty((0, spec.n_features))
        assert expected.shape == streamed.shape
        np.testing.assert_allclose(streamed, expected, rtol=1e-9, atol=1e-6)
        assert list(range(len(ends))) == index

    @settings(max_examples=100, deadline=None)
    @given(spec_and_samples())
    def test_samples_to_next_window_is_exactly_how_many_samples_complete_the_next_window(
        self, case: tuple[FeatureSpec, np.ndarray, list[int]]
    ) -> None:
        """One sample fewer completes no window; exactly that many completes one."""
        spec, values, cuts = case
        featurizer = StreamingFeaturizer(spec)
        for chunk in np.split(values, cuts):
            featurizer.push(chunk)
        need = featurizer.samples_to_next_window
        assert need >= 1
        sample = np.zeros((1, len(spec.channels)))
        probe = StreamingFeaturizer.from_state(spec, featurizer.state())
        assert len(probe.push(np.repeat(sample, need - 1, axis=0))) == 0
        assert len(probe.push(sample)) == 1

    @settings(max_examples=60, deadline=None)
    @given(spec_and_samples(), st.integers(0, 120))
    def test_featurizer_resumed_from_saved_state_continues_identically(
        self, case: tuple[FeatureSpec, np.ndarray, list[int]], cut: int
    ) -> None:
        """Saving state mid-stream and resuming in a new featurizer equals never stopping."""
        spec, values, _ = case
        cut = min(cut, len(values))
        whole = StreamingFeaturizer(spec).push(values)
        first = StreamingFeaturizer(spec)
        a = first.push(values[:cut])
        resumed = StreamingFeaturizer.from_state(spec, first.state())
        b = resumed.push(values[cut:])
        np.testing.assert_array_equal(np.concatenate([a.index, b.index]), whole.index)
        np.testing.assert_allclose(
            np.concatenate([a.features, b.features]), whole.features, rtol=1e-12, atol=1e-9
        )

    @settings(max_examples=120, deadline=None)
    @given(
        st.integers(1, 3),
        st.integers(2, 70),
        st.integers(1, 6),
        arrays(np.float64, st.tuples(st.integers(0, 160), st.just(3)), elements=finite),
    )
    def test_batch_features_equal_the_textbook_definitions_for_any_window_and_hop(
        self, n_channels: int, window: int, hop: int, data: np.ndarray
    ) -> None:
        """Every statistic equals its numpy definition, also on the shared-block path (window ≥ 16 hop)."""
        spec = FeatureSpec(
            channels=tuple(f"c{i}" for i in range(n_channels)),
            window=window,
            hop=hop,
            statistics=ALL_STATISTICS,
        )
        values = data[:, :n_channels]
        features, ends = batch_features(values, spec)
        t = np.arange(window, dtype=np.float64)
        for row, end in zip(features, ends, strict=True):
            w = values[end - window : end]
            expected = []
            for c in range(n_channels):
                x = w[:, c]
                expected += [
                    x.mean(),
                    x.std(),
                    x.min(),
                    x.max(),
                    np.sqrt(np.mean(x * x)),
                    np.ptp(x),
                    np.polyfit(t, x, 1)[0] if np.ptp(x) > 0 else 0.0,
                    x[-1],
                ]
            scale = max(1.0, float(np.abs(w).max()))
            np.testing.assert_allclose(row, expected, rtol=1e-7, atol=1e-7 * scale)

    def test_statistics_match_their_definitions(self) -> None:
        """mean, std, min, max, rms, ptp, slope and last of a known window."""
        spec = FeatureSpec(channels=("x",), window=4, hop=4, statistics=ALL_STATISTICS)
        features, _ = batch_features(np.array([[1.0], [2.0], [3.0], [6.0]]), spec)
        named = dict(zip(spec.feature_names(), features[0], strict=True))
        assert named["x__mean"] == pytest.approx(3.0)
        assert named["x__std"] == pytest.approx(np.std([1, 2, 3, 6]))
        assert (named["x__min"], named["x__max"], named["x__ptp"], named["x__last"]) == (1.0, 6.0, 5.0, 6.0)
        assert named["x__rms"] == pytest.approx(np.sqrt(np.mean([1, 4, 9, 36])))
        assert named["x__slope"] == pytest.approx(np.polyfit([0, 1, 2, 3], [1, 2, 3, 6], 1)[0])

    def test_spec_hash_changes_with_any_field_and_not_otherwise(self) -> None:
        """Equal specs hash equal; changing window, hop, channels or statistics changes the hash."""
        base = FeatureSpec(channels=("a", "b"), window=8, hop=4)
        assert base.spec_hash() == FeatureSpec(channels=("a", "b"), window=8, hop=4).spec_hash()
        variants = [
            base.model_copy(update={"window": 9}),
            base.model_copy(update={"hop": 5}),
            base.model_copy(update={"channels": ("b", "a")}),
            base.model_copy(update={"statistics": ("mean",)}),
        ]
        assert len({base.spec_hash(), *(v.spec_hash() for v in variants)}) == 5

    def test_duplicate_channels_are_refused(self) -> None:
        """A spec naming a channel twice is invalid."""
        with pytest.raises(ValueError, match="unique"):
            FeatureSpec(channels=("a", "a"), window=4, hop=2)

    def test_a_spec_in_seconds_counts_whole_samples_at_its_rate(self) -> None:
        """8 s windows every 2 s at 50 Hz are 400 and 100 samples; at 9.9 Hz they round to 79 and 20."""
        spec = FeatureSpec(channels=("a",), window_s=8.0, hop_s=2.0, sampling=Sampling(rate_hz=50.0))
        assert (spec.window, spec.hop, spec.rate_hz) == (400, 100, 50.0)
        slow = FeatureSpec(channels=("a",), window_s=8.0, hop_s=2.0, sampling=Sampling(rate_hz=9.9))
        assert (slow.window, slow.hop) == (79, 20)
        assert FeatureSpec.model_validate_json(spec.model_dump_json()) == spec  # as the manifest stores it

    @pytest.mark.parametrize(
        ("fields", "problem"),
        [
            ({"window_s": 8.0, "hop_s": 2.0}, "sampling"),
            ({"window_s": 8.0, "sampling": {"rate_hz": 50.0}}, "together"),
            ({"window_s": 8.0, "hop_s": 2.0, "window": 399, "sampling": {"rate_hz": 50.0}}, "disagrees"),
            ({"window_s": 0.01, "hop_s": 0.01, "sampling": {"rate_hz": 50.0}}, "window"),
        ],
    )
    def test_a_spec_in_seconds_without_a_rate_or_inconsistent_is_refused(
        self, fields: dict[str, object], problem: str
    ) -> None:
        """Seconds need the rate; window_s and hop_s go together; given samples must agree; ≥ 2 samples."""
        with pytest.raises(ValueError, match=problem):
            FeatureSpec.model_validate({"channels": ["a"], **fields})

    def test_specs_written_before_sampling_existed_keep_their_hash(self) -> None:
        """The hash of a sample-count spec without sampling is the one older manifests carry."""
        old = FeatureSpec(channels=("a", "b"), window=8, hop=4, statistics=("mean",))
        canonical = json.dumps(
            {"version": 1, "channels": ["a", "b"], "window": 8, "hop": 4, "statistics": ["mean"]},
            sort_keys=True,
            separators=(",", ":"),
        )
        assert old.spec_hash() == hashlib.sha256(canonical.encode()).hexdigest()
        with_rate = old.model_copy(update={"sampling": Sampling(rate_hz=50.0)})
        assert with_rate.spec_hash() != old.spec_hash()

    @settings(max_examples=100, deadline=None)
    @given(timed_spec_and_samples())
    def test_streaming_features_equal_batch_features_for_specs_in_seconds(
        self, case: tuple[FeatureSpec, np.ndarray, list[int]]
    ) -> None:
        """A spec in seconds goes through the same implementation: any chunking equals the batch."""
        spec, values, cuts = case
        expected, _ = batch_features(values, spec)
        featurizer = StreamingFeaturizer(spec)
        streamed = [featurizer.push(chunk).features for chunk in np.split(values, cuts)]
        got = np.concatenate(streamed) if streamed else np.empty((0, spec.n_features))
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-6)


@st.composite
def stream_and_chunks(draw: st.DrawFn) -> tuple[Sampling, np.ndarray, np.ndarray, list[int]]:
    """Irregular timestamps (jitter, gaps, repeats, a step back) with values, and cut points."""
    rate = draw(st.floats(0.5, 60.0))
    n = draw(st.integers(0, 150))
    steps = draw(
        arrays(np.float64, n, elements=st.floats(0.0, 4.0 / rate, allow_nan=False))
    )  # repeats (0) and up to 4 periods
    ts = 1.7e9 + np.cumsum(steps)
    if n > 10 and draw(st.booleans()):
        ts[n // 2 :] += draw(st.floats(-3.0 / rate, 30.0 / rate))  # a step back, or a long gap
    values = draw(arrays(np.float64, (n, 2), elements=finite))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    sampling = Sampling(rate_hz=rate, max_gap_s=draw(st.floats(1.5 / rate, 10.0 / rate)))
    return sampling, ts, values, cuts


class TestSampling:
    @settings(max_examples=200, deadline=None)
    @given(stream_and_chunks())
    def test_streaming_resampling_equals_batch_resampling_for_any_chunking(
        self, case: tuple[Sampling, np.ndarray, np.ndarray, list[int]]
    ) -> None:
        """Chunk by chunk, the resampler gives the batch grid, values and source rows, bit for bit."""
        sampling, ts, values, cuts = case
        whole = resample(ts, values, sampling)
        resampler = StreamingResampler(sampling)
        parts = []
        start = 0
        for end in [*cuts, len(ts)]:
            got = resampler.push(ts[start:end], values[start:end])
            parts.append((got.timestamps, got.values, got.source_rows + start))
            resampler = StreamingResampler.from_state(sampling, resampler.state())  # a restart
            start = end
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole.timestamps)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]).reshape(-1, 2), whole.values)
        np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), whole.source_rows)

    @settings(max_examples=200, deadline=None)
    @given(stream_and_chunks())
    def test_resampled_points_are_on_the_grid_interpolated_and_never_inside_a_gap(
        self, case: tuple[Sampling, np.ndarray, np.ndarray, list[int]]
    ) -> None:
        """Each point is t0 + k / rate, between the sample before it and its source, close enough together."""
        sampling, ts, values, _ = case
        out = resample(ts, values, sampling)
        if not len(ts):
            assert len(out) == 0
            return
        k = (out.timestamps - ts[0]) * sampling.rate_hz
        np.testing.assert_allclose(k, np.round(k), atol=1e-3)
        assert (np.diff(out.timestamps) > 0).all()
        kept = np.flatnonzero(ts > np.maximum.accumulate(np.concatenate(([-np.inf], ts[:-1]))))
        for t, v, row in zip(out.timestamps[1:], out.values[1:], out.source_rows[1:], strict=True):
            before = kept[np.searchsorted(kept, row) - 1]
            assert ts[before] < t <= ts[row]
            assert ts[row] - ts[before] <= sampling.max_gap_s or t == ts[row]  # across a gap: on a sample
            fraction = (t - ts[before]) / (ts[row] - ts[before])
            expected = values[before] + (values[row] - values[before]) * fraction
            np.testing.assert_allclose(v, expected, rtol=1e-12, atol=1e-9)

    def test_a_ten_hertz_log_measures_ten_hertz_and_mismatches_a_fifty_hertz_model(self) -> None:
        """The measured rate is one over the median interval; 10 Hz against 50 Hz is a rate mismatch."""
        rng = np.random.default_rng(3)
        ts = 1.7e9 + np.cumsum(0.1 + rng.normal(0, 0.005, 400))
        measure = measure_rate(ts)
        assert measure.rate_hz == pytest.approx(10.0, rel=0.01)
        assert measure.jitter == pytest.approx(0.05, rel=0.2)
        assert Sampling(rate_hz=50.0).judge(measure.rate_hz, measure.jitter) == "rate_mismatch"
        assert Sampling(rate_hz=10.0).judge(measure.rate_hz, measure.jitter) == "ok"
        assert Sampling(rate_hz=10.0, jitter=0.01).judge(measure.rate_hz, measure.jitter) == "jitter"

    def test_the_rate_monitor_judges_the_last_intervals_whatever_the_chunking(self) -> None:
        """Fed in chunks or at once, and after a restart, the monitor measures the same; unknown at first."""
        ts = 1.7e9 + np.arange(600) * 0.02
        ts[300:] = ts[299] + np.arange(1, 301) * 0.1  # the logger drops to 10 Hz half way
        once, chunked = RateMonitor(), RateMonitor()
        chunked.push(ts[:10])
        assert chunked.verdict(Sampling(rate_hz=50.0)) == "unknown"
        once.push(ts)
        for a, b in itertools.pairwise([10, 77, 300, 301, 600]):
            restarted = RateMonitor()
            restarted.restore(json.loads(json.dumps(chunked.state())))
            chunked = restarted
            chunked.push(ts[a:b])
        assert once.measure() == chunked.measure()
        assert once.measure().rate_hz == pytest.approx(10.0)
        assert once.verdict(Sampling(rate_hz=50.0)) == "rate_mismatch"
        assert once.verdict(None) == "unknown"


SCHEMA = RecordSchema(format="csv", timestamp_field="ts", channels={"X_I": "x_current", "Y_T": "y_temp"})


class TestRecords:
    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.tuples(st.floats(0, 2e9, allow_nan=False), finite, finite), max_size=50))
    def test_formatted_csv_lines_parse_back_to_the_same_values(
        self, rows: list[tuple[float, float, float]]
    ) -> None:
        """format_csv_line then RecordParser.parse is the identity on finite values, in order."""
        rows = sorted(rows, key=lambda r: r[0])
        parser = RecordParser(SCHEMA)
        parser.set_header("ts,X_I,Y_T")
        data = "".join(format_csv_line(t, (x, y)) for t, x, y in rows).encode()
        result = parser.parse(data, base_offset=100)
        assert [] == result.rejected
        np.testing.assert_array_equal(result.batch.timestamps, [r[0] for r in rows])
        np.testing.assert_array_equal(result.batch.values, np.array([r[1:] for r in rows]).reshape(-1, 2))
        if rows:
            assert result.batch.starts[0] == 100
            assert result.batch.ends[-1] == 100 + len(data)

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.tuples(st.floats(0, 2e9, allow_nan=False), finite, finite), max_size=30))
    def test_json_lines_parse_to_the_same_records_as_csv(
        self, rows: list[tuple[float, float, float]]
    ) -> None:
        """The same records written as JSON lines and as CSV parse to identical arrays."""
        rows = sorted(rows, key=lambda r: r[0])
        csv_parser = RecordParser(SCHEMA)
        csv_parser.set_header("ts,X_I,Y_T")
        json_parser = RecordParser(SCHEMA.model_copy(update={"format": "jsonl"}))
        csv = csv_parser.parse("".join(format_csv_line(t, (x, y)) for t, x, y in rows).encode())
        jsonl = json_parser.parse(
            "".join(json.dumps({"ts": t, "X_I": x, "Y_T": y}) + "\n" for t, x, y in rows).encode()
        )
        np.testing.assert_array_equal(csv.batch.values, jsonl.batch.values)
        np.testing.assert_array_equal(csv.batch.timestamps, jsonl.batch.timestamps)

    def test_columns_are_mapped_to_canonical_channels_in_mapping_order(self) -> None:
        """A file with extra columns in any order yields the mapped channels only, in mapping order."""
        parser = RecordParser(SCHEMA)
        parser.set_header("Y_T,extra,ts,X_I")
        result = parser.parse(b"30.5,zzz,1000,2.5\n")
        assert ("x_current", "y_temp") == SCHEMA.canonical_channels
        assert [[2.5, 30.5]] == result.batch.values.tolist()

    def test_header_missing_a_mapped_column_is_a_clear_error(self) -> None:
        """The error names the missing column."""
        with pytest.raises(RecordError, match="Y_T"):
            RecordParser(SCHEMA).set_header("ts,X_I")

    @pytest.mark.parametrize(
        ("line", "reason"),
        [
            (b"1,2\n", "field_count"),
            (b"1,abc,3\n", "not_numeric"),
            (b"1,nan,3\n", "not_finite"),
            (b"1,inf,3\n", "not_finite"),
            (b"1,\xff\xfe,3\n", "not_utf8"),
            (b"1,\x00\x00,3\n", "binary"),
            (b"yesterday,1,3\n", "bad_timestamp"),
            (b"ts,X_I,Y_T\n", "header"),
            (b"\n", "empty"),
        ],
    )
    def test_a_bad_line_is_rejected_with_its_reason_and_the_good_lines_kept(
        self, line: bytes, reason: str
    ) -> None:
        """Only the bad line is rejected, with its reason and byte offset; its neighbours survive."""
        parser = RecordParser(SCHEMA)
        parser.set_header("ts,X_I,Y_T")
        good = b"1,1,1\n"
        result = parser.parse(good + line + b"2,2,2\n", base_offset=10)
        assert [reason] == [r.reason for r in result.rejected]
        assert 10 + len(good) == result.rejected[0].offset
        assert [1.0, 2.0] == result.batch.timestamps.tolist()

    def test_timestamps_going_back_beyond_tolerance_are_rejected(self) -> None:
        """Within tolerance a step back is accepted; beyond it the line is rejected as time_backwards."""
        parser = RecordParser(SCHEMA)
        parser.set_header("ts,X_I,Y_T")
        result = parser.parse(b"10,1,1\n9.5,1,1\n5,1,1\n11,1,1\n", backwards_tolerance_s=1.0)
        assert [10.0, 9.5, 11.0] == result.batch.timestamps.tolist()
        assert ["time_backwards"] == [r.reason for r in result.rejected]

    def test_out_of_range_values_are_rejected_per_channel_limits(self) -> None:
        """A value outside the configured limits of its channel is rejected as out_of_range."""
        schema = SCHEMA.model_copy(update={"limits": {"y_temp": (-40.0, 150.0)}})
        parser = RecordParser(schema)
        parser.set_header("ts,X_I,Y_T")
        result = parser.parse(b"1,1,20\n2,1,900\n")
        assert ["out_of_range"] == [r.reason for r in result.rejected]

    @pytest.mark.parametrize(
        ("text", "epoch"),
        [
            ("1700000000.25", 1700000000.25),
            ("2023-11-14T22:13:20Z", 1700000000.0),
            ("2023-11-14T23:13:20+01:00", 1700000000.0),
            ("2023-11-14 22:13:20", 1700000000.0),
        ],
    )
    def test_timestamps_are_read_as_epoch_or_iso_8601(self, text: str, epoch: float) -> None:
        """Epoch seconds and ISO 8601 (naive means UTC) give the same instant."""
        assert epoch == parse_timestamp(text)


class TestAlertsAndTopics:
    def _event(self, **changes: object) -> AlertEvent:
        fields: dict[str, object] = {
            "event_id": derive_event_id("r1", "arm1", "m@1", "gripper", "wear", 7, "raised"),
            "alert_id": "x",
            "robot_id": "r1",
            "site": "s",
            "stream": "arm1",
            "component": "gripper",
            "failure_mode": "wear",
            "state": "raised",
            "severity": "warning",
            "score": 0.9,
            "threshold": 0.7,
            "window": WindowRef(index=7, start=1.0, end=2.0, source_file="/x.csv", byte_start=0, byte_end=10),
            "model": ModelRef(id="m", version=1),
            "agent_version": "0.1.0",
            "replayed": False,
            "emitted_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
        }
        fields.update(changes)
        return AlertEvent.model_validate(fields)

    def test_alert_event_round_trips_through_json(self) -> None:
        """Serialising and parsing an alert gives an equal object with schema_version set."""
        event = self._event()
        text = event.model_dump_json()
        assert event == AlertEvent.model_validate_json(text)
        assert "1.1" == json.loads(text)["schema_version"]

    def test_event_ids_are_stable_and_distinguish_every_input(self) -> None:
        """Same inputs give the same id; changing any one of them changes it."""
        args = ("r1", "arm1", "m@1", "gripper", "wear", 7, "raised")
        assert derive_event_id(*args) == derive_event_id(*args)
        variants = {
            derive_event_id(*args[:i], "other" if isinstance(a, str) else 8, *args[i + 1 :])
            for i, a in enumerate(args[:6])
        }
        variants.add(derive_event_id(*args[:6], "cleared"))
        assert derive_event_id(*args) not in variants
        assert 7 == len(variants)

    def test_unknown_alert_fields_are_refused(self) -> None:
        """The schema is closed: an extra field is a validation error."""
        with pytest.raises(ValueError, match="extra"):
            self._event(colour="red")

    def test_topic_tree_builds_and_parses_robot_topics(self) -> None:
        """Robot topics follow robotpm/v1/<site>/<robot>/<kind> and parse back."""
        topics = RobotTopics("plant-a", "r1")
        assert "robotpm/v1/plant-a/r1/alerts" == topics.alerts
        assert ("plant-a", "r1", "status") == parse_robot_topic(topics.status)
        assert "robotpm/v1/+/+/alerts" == subscription("alerts")
        assert "robotpm/v1/plant-a/+/heartbeat" == subscription("heartbeat", site="plant-a")
        assert parse_robot_topic("robotpm/v1/a/b/unknown") is None

    @pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "with space", "x" * 65])
    def test_topic_segments_with_wildcards_or_slashes_are_refused(self, bad: str) -> None:
        """A robot id that would break the topic tree is refused."""
        with pytest.raises(ValueError, match="robot id"):
            RobotTopics("site", bad)
