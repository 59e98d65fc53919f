"""One sensor stream's pipeline: line blocks → records → windows → scores → alert events.

`StreamPipeline.process` takes the blocks a follower read and returns the alert
events they cause (raised and updated ones with the channels that drove the score:
`agent.streams.attribution`). Everything it needs to resume exactly where it stopped (the
follower's position, the open window, the alert policy's counters) is in
`StreamPipeline.state`, which the daemon commits in the same transaction as the
events' outbox rows.

A window that spans two files (a rotation) is attributed to the file of its last
sample; its ``byte_start`` is then 0. A stream resampled onto the model's rate
(`agent.streams.sampling`) cuts windows from grid points; a grid point's line is
the one that completed it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import numpy.typing as npt
import structlog

from agent.config import DriftConfig, IngestConfig
from agent.contract.alerts import AlertEvent, WindowRef
from agent.contract.errors import RecordError
from agent.contract.features import CompletedWindows, FeaturizerState, StreamingFeaturizer
from agent.contract.manifest import ModelManifest
from agent.contract.records import RAW_KEEP, RecordParser, RecordSchema, RejectedLine
from agent.contract.streams import StreamConfig
from agent.contract.timerule import StreamClock, TimeRule
from agent.seams import Block, Policy, QuarantineSink, Scorer, ShadowHook
from agent.streams.attribution import ChannelAttribution
from agent.streams.drift import DriftMonitor
from agent.streams.sampling import StreamSampling

log = structlog.get_logger("robotpm.pipeline")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(slots=True)
class StreamCounters:
    """What one stream has done since the agent started."""

    lines: int = 0
    windows: int = 0
    alerts: int = 0
    quarantined: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Meta:
    """Per-sample metadata kept for the samples of the open window."""

    ts: FloatArray
    start: IntArray
    end: IntArray
    source: list[str]

    @classmethod
    def empty(cls) -> _Meta:
        return cls(np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), [])

    def then(self, ts: FloatArray, start: IntArray, end: IntArray, source: str, keep: int) -> _Meta:
        """The last `keep` samples of these samples followed by new ones from `source`."""
        n = len(ts)
        if n >= keep:
            cut = n - keep
            return _Meta(ts[cut:].copy(), start[cut:].copy(), end[cut:].copy(), [source] * keep)
        cut = max(0, len(self.ts) - (keep - n))
        return _Meta(
            np.concatenate([self.ts[cut:], ts]),
            np.concatenate([self.start[cut:], start]),
            np.concatenate([self.end[cut:], end]),
            [*self.source[cut:], *([source] * n)],
        )


class _WindowRefs(Sequence[WindowRef]):
    """The `WindowRef` of each window a block completed, built only when asked for.

    Most windows cause no event, and a pydantic model per window was most of the
    catch-up time at hop 1.
    """

    __slots__ = ("_built", "_ends", "_first", "_index", "_last", "_meta", "_source", "_starts", "_ts")

    def __init__(
        self,
        meta: _Meta,
        ts: FloatArray,
        starts: IntArray,
        ends: IntArray,
        source: str,
        done: CompletedWindows,
    ) -> None:
        self._meta = meta  # the samples before the block (never mutated: _Meta.then makes new ones)
        self._ts, self._starts, self._ends, self._source = ts, starts, ends, source
        self._index, self._first, self._last = done.index, done.start_rows, done.end_rows
        self._built: dict[int, WindowRef] = {}

    def __len__(self) -> int:
        return len(self._index)

    @overload
    def __getitem__(self, item: int) -> WindowRef: ...

    @overload
    def __getitem__(self, item: slice) -> Sequence[WindowRef]: ...

    def __getitem__(self, item: int | slice) -> WindowRef | Sequence[WindowRef]:
        if isinstance(item, slice):
            return [self[i] for i in range(*item.indices(len(self)))]
        row = range(len(self))[item]  # IndexError and negative indices as for a list
        ref = self._built.get(row)
        if ref is None:
            ref = self._build(row)
            self._built[row] = ref
        return ref

    def _build(self, row: int) -> WindowRef:
        first, last = int(self._first[row]), int(self._last[row])  # rows of the block; first < 0: before
        if first >= 0:
            start, byte_start = float(self._ts[first]), int(self._starts[first])
        else:
            meta = self._meta
            at = len(meta.ts) + first
            start = float(meta.ts[at])
            byte_start = int(meta.start[at]) if meta.source[at] == self._source else 0
        return WindowRef(
            index=int(self._index[row]),
            start=start,
            end=float(self._ts[last]),
            source_file=self._source,
            byte_start=byte_start,
            byte_end=int(self._ends[last]),
        )


class StreamPipeline:
    """Turns one stream's line blocks into alert events, with resumable state."""

    def __init__(
        self,
        stream: StreamConfig,
        ingest: IngestConfig,
        scorer: Scorer,
        policy: Policy,
        quarantine: QuarantineSink,
        *,
        drift: DriftConfig | None = None,
    ) -> None:
        self.stream = stream
        self._drift_config = drift
        self._ingest = ingest
        self._schema: RecordSchema = stream.record_schema()
        self._scorer = scorer
        self._policy = policy
        self._quarantine = quarantine
        self._parsers: dict[str, RecordParser] = {}
        self._featurizer = StreamingFeaturizer(scorer.manifest.feature_spec)
        self._shadow: ShadowHook | None = None
        self._meta = _Meta.empty()
        self._clock = StreamClock(
            TimeRule(
                ingest.backwards_tolerance_s,
                ingest.time_jump_s,
                ingest.time_rebase_lines,
                uptime=self._schema.timestamp_kind == "uptime",
            )
        )
        self._shortest_line: int | None = None
        self.counters = StreamCounters()
        self.drift = DriftMonitor(scorer.manifest, drift)
        self.attribution = ChannelAttribution(scorer.manifest)
        self.sampling = StreamSampling(stream, scorer.manifest)
        self.on_scored: Callable[[float], None] | None = None
        """Called with the seconds each scoring call took (the daemon's inference-latency histogram)."""
        self._check_channels(scorer.manifest)

    @property
    def name(self) -> str:
        """The stream's name."""
        return self.stream.name

    @property
    def lines_to_next_window(self) -> int:
        """How many more valid lines complete the next window: fewer cannot cause an event."""
        return self.sampling.lines_for(self._featurizer.samples_to_next_window)

    def degraded_reason(self) -> str | None:
        """Why the stream is degraded (a sample rate the model was not trained for), None if it is not."""
        return self.sampling.degraded_reason()

    @property
    def shortest_line(self) -> int | None:
        """Bytes (with its newline) of the shortest valid line seen so far; None before the first."""
        return self._shortest_line

    def policy_counters(self) -> dict[str, Any]:
        """The alert policy's counters (events emitted, events suppressed by reason)."""
        return self._policy.counters()

    def _check_channels(self, manifest: ModelManifest) -> None:
        needed = manifest.feature_spec.channels
        missing = [c for c in needed if c not in self._schema.canonical_channels]
        if missing:
            raise RecordError(
                f"stream {self.name}: model {manifest.label} needs channels {missing} that the "
                f"stream's channel mapping does not provide"
            )
        self._column_order = np.array([self._schema.canonical_channels.index(c) for c in needed])

    def use_scorer(self, scorer: Scorer) -> None:
        """Score the next windows with `scorer`; the open window is kept when the feature spec is equal."""
        old_hash = self._scorer.manifest.feature_spec_hash
        self._check_channels(scorer.manifest)
        self._scorer = scorer
        self._policy.use_model(scorer.manifest)
        self.drift = DriftMonitor(scorer.manifest, self._drift_config)  # judged against the new training data
        self.attribution = ChannelAttribution(scorer.manifest)
        self.sampling.use_model(scorer.manifest, keep_grid=scorer.manifest.feature_spec_hash == old_hash)
        if scorer.manifest.feature_spec_hash != old_hash:
            # Different windows or statistics: the open window cannot be continued.
            seen = self._featurizer.samples_seen
            self._featurizer = StreamingFeaturizer(scorer.manifest.feature_spec)
            self._meta = _Meta.empty()
            log.info("feature_spec_changed", stream=self.name, samples_before=seen)

    def set_shadow(self, hook: ShadowHook | None) -> None:
        """Hand every scored window batch to `hook` too (None: stop); alerts still come from the scorer.

        The daemon sets it for a model on probation; it also sees every block's parsed samples,
        from which a candidate with another feature spec cuts its own windows.
        """
        self._shadow = hook

    def process(self, blocks: Sequence[Block], *, replayed: bool) -> list[AlertEvent]:
        """Parse, window, score and judge `blocks` (in stream order); return the alert events."""
        events: list[AlertEvent] = []
        for block in blocks:
            events.extend(self._process_block(block, replayed=replayed))
        return events

    def _process_block(self, block: Block, *, replayed: bool) -> list[AlertEvent]:
        rejected: list[RejectedLine] = list(block.rejected)
        parser = self._parser_for(block)
        batch = None
        if parser is None:
            if block.data:
                rejected.append(
                    RejectedLine(
                        block.offset,
                        len(block.data),
                        "bad_header",
                        "file header unusable",
                        block.data[:RAW_KEEP],
                    )
                )
        elif block.data:
            result = parser.parse(block.data, block.offset, clock=self._clock)
            rejected.extend(result.rejected)
            batch = result.batch
        if rejected:
            self._quarantine.write(self.name, block.path, rejected)
            self.counters.quarantined += len(rejected)
            for line in rejected:
                self.counters.by_reason[line.reason] = self.counters.by_reason.get(line.reason, 0) + 1
        if batch is None or not len(batch):
            return []
        self.counters.lines += len(batch)
        shortest = int((batch.ends - batch.starts).min())
        if self._shortest_line is None or shortest < self._shortest_line:
            self._shortest_line = shortest
        if self._shadow is not None:
            self._shadow.samples(self.stream, self._schema.canonical_channels, batch.timestamps, batch.values)
        timestamps, values, starts, ends = self.sampling.take(
            batch.timestamps, batch.values[:, self._column_order], batch.starts, batch.ends
        )  # on the model's grid when the stream resamples
        featurizer = self._featurizer
        done = featurizer.push(values)
        before, source = self._meta, str(block.path)
        keep = min(featurizer.samples_seen, featurizer.spec.window - 1)
        self._meta = before.then(timestamps, starts, ends, source, keep)
        if not len(done):
            return []
        self.counters.windows += len(done)
        self.drift.update(done.features)
        refs = _WindowRefs(before, timestamps, starts, ends, source, done)
        started = time.perf_counter()
        scores = self._scorer.score(done.features)
        if self.on_scored is not None:
            self.on_scored(time.perf_counter() - started)
        if self._shadow is not None:
            self._shadow(done.features, scores)
        events = self._policy.evaluate(scores, refs, done.features, replayed=replayed)
        if events:
            events = self.attribution.explain(events, done.features, done.index, self._scorer)
        self.counters.alerts += len(events)
        return events

    def _parser_for(self, block: Block) -> RecordParser | None:
        parser = self._parsers.get(block.file_key)
        if parser is not None:
            return parser
        parser = RecordParser(self._schema)
        if self._schema.format == "csv":
            if block.header is None:
                return None
            try:
                parser.set_header(block.header)
            except RecordError as exc:
                log.warning("bad_header", stream=self.name, file=str(block.path), error=str(exc))
                return None
            for note in parser.notes:  # e.g. text columns no channel reads: ignored, not refused
                log.info("record_note", stream=self.name, file=str(block.path), note=note)
        if len(self._parsers) > 64:  # forget files long gone
            self._parsers.pop(next(iter(self._parsers)))
        self._parsers[block.file_key] = parser
        return parser

    def state(self) -> dict[str, Any]:
        """Everything needed to resume this pipeline (JSON-serialisable), minus the follower."""
        featurizer = self._featurizer.state()
        return {
            "model": self._scorer.manifest.label,
            "spec_hash": self._scorer.manifest.feature_spec_hash,
            "samples_seen": featurizer.samples_seen,
            "tail": base64.b64encode(np.ascontiguousarray(featurizer.tail).tobytes()).decode(),
            "meta_ts": self._meta.ts.tolist(),
            "meta_start": self._meta.start.tolist(),
            "meta_end": self._meta.end.tolist(),
            "meta_source": self._meta.source,
            "last_ts": self._clock.newest,
            "clock": self._clock.state(),
            "policy": self._policy.state(),
            "sampling": self.sampling.state(),
        }

    def restore(self, state: dict[str, Any] | None) -> None:
        """Resume from a `state` saved earlier (None: start fresh); what the pipeline held is dropped.

        The stream runner also calls it to rewind a stream to its last committed state.
        """
        self._featurizer = StreamingFeaturizer(self._scorer.manifest.feature_spec)
        self._meta = _Meta.empty()
        self._clock.restore(None)
        if not state:
            self._policy.restore(None)
            return
        self._policy.restore(state.get("policy"))
        self._clock.restore(state.get("clock") or {"newest": state.get("last_ts")})
        same_spec = state.get("spec_hash") == self._scorer.manifest.feature_spec_hash
        self.sampling.restore(state.get("sampling"), same_spec=same_spec)
        if not same_spec:
            log.info("open_window_dropped", stream=self.name, reason="feature spec changed since last run")
            return
        spec = self._featurizer.spec
        tail = np.frombuffer(base64.b64decode(state["tail"]), dtype=np.float64).reshape(
            -1, len(spec.channels)
        )
        self._featurizer = StreamingFeaturizer.from_state(
            spec, FeaturizerState(samples_seen=int(state["samples_seen"]), tail=tail.copy())
        )
        self._meta = _Meta(
            np.asarray(state["meta_ts"], dtype=np.float64),
            np.asarray(state["meta_start"], dtype=np.int64),
            np.asarray(state["meta_end"], dtype=np.int64),
            list(state["meta_source"]),
        )
