"""Metrics for Prometheus without opening a port: a node_exporter textfile, written atomically.

The daemon calls `write_textfile` once per heartbeat with a `MetricsSnapshot` (the
heartbeat record it just built, plus what the heartbeat does not carry: per-stream
counters, lag and degraded state, the broker link, inference latency, the open
alerts). The file is written beside its target under a name node_exporter ignores,
then renamed over it, so a scrape never reads half a file. node_exporter's textfile
collector (``--collector.textfile.directory``) serves it; nothing in the agent listens.

Every metric is prefixed ``robotpm_`` and carries no robot label: node_exporter adds
the instance, and ``robotpm_agent_info`` names robot, site and agent version. A failed
write (missing directory, full disk) is logged and reported as False, never raised:
metrics must not stop the agent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import structlog

from agent.atomicfile import write_atomically
from agent.contract.alerts import Heartbeat, OpenAlerts, StreamDrift

log = structlog.get_logger("robotpm.metrics")

MetricType = Literal["counter", "gauge", "histogram"]

LATENCY_BUCKETS_S: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_DRIFT_STATES: Final = ("unknown", "ok", "drifting")
_SEVERITIES: Final = ("warning", "critical")


class LatencyHistogram:
    """Inference latency: seconds per scored batch, as a Prometheus histogram (cumulative buckets)."""

    __slots__ = ("_buckets", "_count", "_sum", "bounds")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds = tuple(sorted(bounds))
        self._buckets = [0] * len(self.bounds)
        self._sum = 0.0
        self._count = 0

    def observe(self, seconds: float) -> None:
        """Record one scoring call that took `seconds`."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        self._sum += seconds
        self._count += 1
        for i, bound in enumerate(self.bounds):
            if seconds <= bound:
                self._buckets[i] += 1

    @property
    def count(self) -> int:
        """Observations so far."""
        return self._count

    @property
    def sum(self) -> float:
        """Seconds observed so far."""
        return self._sum

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), bounds ascending."""
        return list(zip(self.bounds, self._buckets, strict=True))


class PipelineLike(Protocol):
    """What `StreamMetrics.from_pipeline` reads of an `agent.streams.pipeline.StreamPipeline`."""

    @property
    def name(self) -> str: ...  # noqa: D102

    @property
    def counters(self) -> object: ...  # noqa: D102

    def policy_counters(self) -> Mapping[str, Any]: ...  # noqa: D102


@dataclass(frozen=True, slots=True)
class StreamMetrics:
    """One stream's figures for the metrics file."""

    name: str
    lines: int = 0
    windows: int = 0
    quarantined: Mapping[str, int] = field(default_factory=dict)
    """Quarantined lines by reason."""
    events: Mapping[str, int] = field(default_factory=dict)
    """Alert events emitted by state (raised, updated, cleared)."""
    lag_bytes: int | None = None
    """Bytes written to the stream's files and not read yet."""
    lag_seconds: float | None = None
    """How far the newest scored data is behind now."""
    degraded: str | None = None
    """Why the stream is degraded, or None when it is healthy."""
    drift: StreamDrift | None = None

    @classmethod
    def from_pipeline(
        cls,
        pipeline: PipelineLike,
        *,
        lag_bytes: int | None = None,
        lag_seconds: float | None = None,
        degraded: str | None = None,
        drift: StreamDrift | None = None,
    ) -> StreamMetrics:
        """The counters of a stream pipeline, with the figures only the daemon knows."""
        counters = pipeline.counters
        policy = pipeline.policy_counters()
        return cls(
            name=pipeline.name,
            lines=int(getattr(counters, "lines", 0)),
            windows=int(getattr(counters, "windows", 0)),
            quarantined={str(k): int(v) for k, v in dict(getattr(counters, "by_reason", {})).items()},
            events={state: int(policy.get(state, 0)) for state in ("raised", "updated", "cleared")},
            lag_bytes=lag_bytes,
            lag_seconds=lag_seconds,
            degraded=degraded,
            drift=drift,
        )


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything one metrics file says; built each heartbeat."""

    heartbeat: Heartbeat
    streams: Sequence[StreamMetrics] = ()
    broker_connected: bool | None = None
    inference: LatencyHistogram | None = None
    open_alerts: OpenAlerts | None = None


@dataclass(frozen=True, slots=True)
class _Family:
    name: str
    kind: MetricType
    help: str
    samples: list[tuple[str, Mapping[str, str], float]]
    """(name suffix, labels, value)."""


if TYPE_CHECKING:  # mypy proves the pipeline offers what from_pipeline reads
    from agent.streams.pipeline import StreamPipeline

    def _pipelines_conform(pipeline: StreamPipeline) -> PipelineLike:
        return pipeline


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _families(snapshot: MetricsSnapshot) -> list[_Family]:
    beat = snapshot.heartbeat
    fams: list[_Family] = []

    def add(
        name: str, kind: MetricType, text: str, samples: Iterable[tuple[Mapping[str, str], float]]
    ) -> None:
        fams.append(_Family(name, kind, text, [("", labels, value) for labels, value in samples]))

    add(
        "robotpm_agent_info",
        "gauge",
        "The agent: robot, site and agent version (always 1).",
        [({"robot": beat.robot_id, "site": beat.site, "version": beat.agent_version}, 1)],
    )
    add("robotpm_uptime_seconds", "gauge", "Seconds since the agent started.", [({}, beat.uptime_s)])
    add(
        "robotpm_heartbeat_timestamp_seconds",
        "gauge",
        "Wall time of the heartbeat these figures belong to.",
        [({}, beat.sent_at.timestamp())],
    )
    streams = list(snapshot.streams)
    add(
        "robotpm_lines_total",
        "counter",
        "Valid log lines read, by stream.",
        [({"stream": s.name}, s.lines) for s in streams] or [({"stream": ""}, beat.lines)],
    )
    add(
        "robotpm_windows_total",
        "counter",
        "Windows scored, by stream.",
        [({"stream": s.name}, s.windows) for s in streams] or [({"stream": ""}, beat.windows)],
    )
    add(
        "robotpm_quarantined_lines_total",
        "counter",
        "Lines refused into the quarantine file, by stream and reason.",
        [({"stream": s.name, "reason": r}, n) for s in streams for r, n in sorted(s.quarantined.items())]
        or [({"stream": "", "reason": "any"}, beat.quarantined)],
    )
    add(
        "robotpm_alert_events_total",
        "counter",
        "Alert events emitted, by stream and state (raised, updated, cleared).",
        [({"stream": s.name, "state": st}, n) for s in streams for st, n in sorted(s.events.items())]
        or [({"stream": "", "state": "any"}, beat.alerts)],
    )
    add(
        "robotpm_alert_events_suppressed_total",
        "counter",
        "Alert events held back by the policy's rate limits, by reason.",
        [({"reason": r}, n) for r, n in sorted(beat.alerts_suppressed.items())],
    )
    if snapshot.open_alerts is not None:
        state = snapshot.open_alerts
        add(
            "robotpm_open_alerts",
            "gauge",
            "Alerts open now, by severity (shelved ones included).",
            [({"severity": sev}, sum(1 for a in state.alerts if a.severity == sev)) for sev in _SEVERITIES],
        )
        add(
            "robotpm_shelved_alerts",
            "gauge",
            "Open alerts shelved by a technician.",
            [({}, sum(1 for a in state.alerts if a.shelved))],
        )
    if snapshot.inference is not None:
        latency = snapshot.inference
        buckets: list[tuple[str, Mapping[str, str], float]] = [
            ("_bucket", {"le": _number(bound)}, count) for bound, count in latency.cumulative()
        ]
        buckets.append(("_bucket", {"le": "+Inf"}, latency.count))
        buckets += [("_sum", {}, latency.sum), ("_count", {}, latency.count)]
        fams.append(
            _Family("robotpm_inference_latency_seconds", "histogram", "Seconds per scored batch.", buckets)
        )
    add("robotpm_outbox_messages", "gauge", "Messages waiting in the outbox.", [({}, beat.outbox_depth)])
    add(
        "robotpm_outbox_bytes",
        "gauge",
        "Bytes of topics and payloads in the outbox.",
        [({}, beat.outbox_bytes)],
    )
    add(
        "robotpm_outbox_oldest_age_seconds",
        "gauge",
        "Age (agent running time) of the oldest waiting message; 0 when empty.",
        [({}, beat.outbox_oldest_age_s or 0.0)],
    )
    add(
        "robotpm_outbox_dropped_total",
        "counter",
        "Messages the outbox dropped, by kind and reason.",
        [
            ({"kind": kind, "reason": reason}, n)
            for key, n in sorted(beat.outbox_dropped.items())
            for kind, _, reason in (key.partition(":"),)
        ],
    )
    if snapshot.broker_connected is not None:
        add(
            "robotpm_broker_connected",
            "gauge",
            "1 while the MQTT broker connection is up.",
            [({}, 1 if snapshot.broker_connected else 0)],
        )
    if beat.model is not None:
        add(
            "robotpm_model_info",
            "gauge",
            "The model scoring the streams (always 1).",
            [({"model": beat.model.id, "version": str(beat.model.version)}, 1)],
        )
    if beat.model_candidate is not None:
        add(
            "robotpm_model_candidate_info",
            "gauge",
            "A newer model on probation (always 1).",
            [({"model": beat.model_candidate.id, "version": str(beat.model_candidate.version)}, 1)],
        )
    add(
        "robotpm_model_events_total",
        "counter",
        "Model life-cycle events since the agent started, by state.",
        [({"state": st}, n) for st, n in sorted(beat.model_events.items())],
    )
    add(
        "robotpm_stream_lag_bytes",
        "gauge",
        "Bytes written to a stream's files and not read yet.",
        [({"stream": s.name}, s.lag_bytes) for s in streams if s.lag_bytes is not None],
    )
    add(
        "robotpm_stream_lag_seconds",
        "gauge",
        "How far a stream's newest scored data is behind now.",
        [({"stream": s.name}, s.lag_seconds) for s in streams if s.lag_seconds is not None],
    )
    add(
        "robotpm_stream_degraded",
        "gauge",
        "1 while a stream is degraded (reason in robotpm_stream_degraded_info).",
        [({"stream": s.name}, 0 if s.degraded is None else 1) for s in streams],
    )
    add(
        "robotpm_stream_degraded_info",
        "gauge",
        "Why a stream is degraded (always 1, present only while it is).",
        [({"stream": s.name, "reason": s.degraded}, 1) for s in streams if s.degraded is not None],
    )
    drifts = [(s.name, s.drift) for s in streams if s.drift is not None] or [
        (name, d) for name, d in sorted(beat.drift_streams.items())
    ]
    add(
        "robotpm_drift_state",
        "gauge",
        "A stream's drift state against the training data: 1 for the state it is in.",
        [({"stream": n, "state": st}, 1 if d.state == st else 0) for n, d in drifts for st in _DRIFT_STATES],
    )
    add(
        "robotpm_drift_features",
        "gauge",
        "Features of a stream drifting now.",
        [({"stream": n}, d.drifting_features) for n, d in drifts],
    )
    add(
        "robotpm_drift_max_psi",
        "gauge",
        "Largest PSI of any feature of a stream against its training bins.",
        [({"stream": n}, d.max_psi) for n, d in drifts if d.max_psi is not None],
    )
    add(
        "robotpm_drift_max_shift",
        "gauge",
        "Largest |mean shift| of any feature of a stream, in training standard deviations.",
        [({"stream": n}, d.max_shift) for n, d in drifts if d.max_shift is not None],
    )
    return fams


def render(snapshot: MetricsSnapshot) -> str:
    """The Prometheus text exposition of a snapshot (families without samples are left out)."""
    out: list[str] = []
    for family in _families(snapshot):
        if not family.samples:
            continue
        out.append(f"# HELP {family.name} {_escape(family.help)}")
        out.append(f"# TYPE {family.name} {family.kind}")
        for suffix, labels, value in family.samples:
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            out.append(
                f"{family.name}{suffix}{{{text}}} {_number(float(value))}"
                if text
                else f"{family.name}{suffix} {_number(float(value))}"
            )
    return "\n".join(out) + "\n"


def metric_names(snapshot: MetricsSnapshot) -> set[str]:
    """The metric family names a snapshot writes (for dashboards and their tests)."""
    return {f.name for f in _families(snapshot) if f.samples}


_last_errors: dict[Path, str] = {}


def write_textfile(path: Path, snapshot: MetricsSnapshot) -> bool:
    """Write the snapshot to `path` atomically (a hidden file beside it, then renamed); False on failure.

    A failure is logged when it first happens (and again when its cause changes), a
    recovery once; not on every heartbeat.
    """
    try:  # the hidden file beside it is not *.prom: node_exporter skips it
        write_atomically(path, render(snapshot).encode(), 0o644, sync_directory=False)
    except OSError as exc:
        error = exc.strerror or str(exc)
        if _last_errors.get(path) != error:
            _last_errors[path] = error
            log.warning("metrics_not_written", path=str(path), error=error)
        return False
    if _last_errors.pop(path, None) is not None:
        log.info("metrics_written_again", path=str(path))
    return True
