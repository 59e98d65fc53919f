"""The alert policy: turns per-window scores into alert life-cycle events.

One `AlertPolicy` serves one stream (one asset) of one robot. For every alert head
of the model manifest (a component and a failure mode) it keeps at most one open
alert, and moves it through ``raised → updated* → cleared``:

* **On-delay.** A window is *over* when its score is on the bad side of the head's
  ``warning`` threshold. ``on_delay_windows`` consecutive windows over raise an
  alert, with the severity of the window that completed the run (``critical`` when
  over the critical threshold, else ``warning``).
* **Severity change.** While open, ``on_delay_windows`` consecutive windows at
  another severity level (both over warning) emit ``updated``. Windows in the
  hysteresis band (between ``clear`` and ``warning``) keep the current severity.
* **Hysteresis and off-delay.** ``off_delay_windows`` consecutive windows strictly on
  the good side of the ``clear`` threshold (lower than ``warning``) emit ``cleared``.
* **Rate limit.** At most ``max_events_per_minute`` events per policy and at most one
  ``updated`` per ``min_update_interval_s`` per alert. Time here is *data time* (the
  window's end timestamp), not the wall clock, so a replay of the same input after
  a crash emits exactly the same events. A suppressed event is counted and not
  emitted; the policy state does not move, so the event is tried again on the next
  window and the life cycle stays consistent (no clear without a raise).
  Data time may be stepped (a controller's clock set back a year, which the ingest
  accepts after a few consistent lines): events counted more than a minute in the
  data future are forgotten, and an update interval that comes out negative by more
  than itself starts anew, so a step back never silences a stream until data time
  catches up with the old clock.
* A window whose score is not finite (NaN, inf) is no evidence either way: it
  resets both run counters.

Event ids come from `derive_event_id` (robot, stream, model, head, window index,
state), so replays give identical ids; ``emitted_at`` comes from the clock and is
not part of the id. Each event carries the features with the largest ``|z|``
against the manifest's healthy reference (what is unusual); the stream pipeline
adds to raised and updated events the channels that drove the score
(`agent.streams.attribution`).

Hot swap (`use_model`): open alerts and counters of heads that exist in the new
manifest (same component and failure mode) are kept, and are compared with the new
thresholds from the next window on. Open alerts of heads the new model no longer
has are cleared on the next evaluated window, with an event attributed to the old
model (its last score and clear threshold), so no subscriber keeps an alert open
that nothing will ever clear.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from agent import __version__
from agent.config import AgentConfig, PolicyConfig
from agent.contract.alerts import (
    AlertEvent,
    AlertState,
    FeatureContribution,
    ModelRef,
    OpenAlert,
    WindowRef,
    derive_event_id,
)
from agent.contract.errors import ContractError
from agent.contract.manifest import AlertHead, ModelManifest, Severity
from agent.contract.streams import StreamConfig
from agent.seams import Clock

STATE_VERSION: Final = 1
_RATE_WINDOW_S: Final = 60.0
_Z_LIMIT: Final = 1e6
_STD_FLOOR: Final = 1e-12
_QUIET_MIN_ROWS: Final = 8
"""Batches shorter than this are stepped window by window (cheaper than the vector path)."""

Level = Literal["none", "warning", "critical"]


def head_key(component: str, failure_mode: str) -> str:
    """The key of an alert head: ``<component>/<failure_mode>``."""
    return f"{component}/{failure_mode}"


@dataclass
class _OpenAlert:
    alert_id: str
    severity: Severity
    model_id: str
    model_version: int
    model_label: str
    raised_index: int
    last_event_time: float
    last_score: float
    clear_threshold: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _OpenAlert:
        return cls(
            alert_id=str(data["alert_id"]),
            severity=_severity(data["severity"]),
            model_id=str(data["model_id"]),
            model_version=int(data["model_version"]),
            model_label=str(data["model_label"]),
            raised_index=int(data["raised_index"]),
            last_event_time=float(data["last_event_time"]),
            last_score=float(data["last_score"]),
            clear_threshold=float(data["clear_threshold"]),
        )


@dataclass
class _HeadState:
    over: int = 0
    under: int = 0
    pending_level: Level = "none"
    pending: int = 0
    open: _OpenAlert | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _HeadState:
        level = data.get("pending_level", "none")
        if level not in ("none", "warning", "critical"):
            raise ContractError(f"policy state: unknown pending level {level!r}")
        opened = data.get("open")
        return cls(
            over=int(data.get("over", 0)),
            under=int(data.get("under", 0)),
            pending_level=level,
            pending=int(data.get("pending", 0)),
            open=None if opened is None else _OpenAlert.from_json(opened),
        )


@dataclass
class _Counters:
    raised: int = 0
    updated: int = 0
    cleared: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _severity(value: object) -> Severity:
    if value == "warning":
        return "warning"
    if value == "critical":
        return "critical"
    raise ContractError(f"policy state: unknown severity {value!r}")


def level_of(head: AlertHead, score: float) -> Level:
    """The severity level a score reaches for a head (``none`` below warning)."""
    t = head.thresholds
    if head.direction == "higher_is_worse":
        if score >= t.critical:
            return "critical"
        return "warning" if score >= t.warning else "none"
    if score <= t.critical:
        return "critical"
    return "warning" if score <= t.warning else "none"


def is_clear(head: AlertHead, score: float) -> bool:
    """Whether a score is strictly on the good side of the head's clear threshold."""
    t = head.thresholds
    return score < t.clear if head.direction == "higher_is_worse" else score > t.clear


def explain(
    manifest: ModelManifest, row: npt.NDArray[np.float64], top: int
) -> tuple[FeatureContribution, ...]:
    """The `top` features of one feature vector with the largest ``|z|`` against the healthy training data.

    The baseline is `ModelManifest.explanation_reference`: the healthy training windows,
    or all of them for a manifest without a healthy reference.

    Non-finite feature values are skipped; a zero training std gives z = 0 for an
    equal value and ±1e6 otherwise (JSON has no infinities).
    """
    if top <= 0:
        return ()
    reference = manifest.explanation_reference
    mean = np.asarray(reference.mean, dtype=np.float64)
    std = np.asarray(reference.std, dtype=np.float64)
    values = np.asarray(row, dtype=np.float64)
    if values.shape != mean.shape:
        raise ContractError(f"feature vector has {values.shape[0]} values, manifest expects {mean.shape[0]}")
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (values - mean) / np.where(std > _STD_FLOOR, std, np.nan)
    flat = np.abs(std) <= _STD_FLOOR
    z = np.where(flat, np.where(np.isclose(values, mean), 0.0, np.sign(values - mean) * _Z_LIMIT), z)
    z = np.clip(z, -_Z_LIMIT, _Z_LIMIT)
    usable = np.isfinite(values) & np.isfinite(z)
    candidates = np.flatnonzero(usable)
    if candidates.size == 0:
        return ()
    # Largest |z| first; ties broken by feature order (stable), so the result is deterministic.
    order = candidates[np.argsort(-np.abs(z[candidates]), kind="stable")][:top]
    out: list[FeatureContribution] = []
    for i in order:
        name = manifest.feature_names[int(i)]
        channel, _, statistic = name.rpartition("__")
        out.append(
            FeatureContribution(
                name=name,
                channel=channel or name,
                statistic=statistic,
                value=float(values[i]),
                z=round(float(z[i]), 6),
            )
        )
    return tuple(out)


class AlertPolicy:
    """Scores → alert events for one stream; see the module docstring for the rules."""

    def __init__(
        self,
        manifest: ModelManifest,
        config: PolicyConfig,
        *,
        robot_id: str,
        site: str,
        stream: str,
        agent_version: str,
        clock: Clock,
    ) -> None:
        self._config = config
        self._robot_id = robot_id
        self._site = site
        self._stream = stream
        self._agent_version = agent_version
        self._clock = clock
        self._manifest = manifest
        self._heads: dict[str, _HeadState] = {}
        self._orphans: dict[str, tuple[str, str, _OpenAlert]] = {}
        self._recent: deque[float] = deque()
        self._counters = _Counters()
        self._reset_heads(manifest)

    @classmethod
    def for_stream(
        cls, manifest: ModelManifest, stream: StreamConfig, config: AgentConfig, clock: Clock
    ) -> AlertPolicy:
        """The policy the agent runs on `stream`, the daemon's and a replay's alike.

        Its events name the stream's robot (``robot_id`` of the stream, else of the agent),
        the agent's site and this agent's version.
        """
        return cls(
            manifest,
            config.policy,
            robot_id=stream.robot_id or config.robot_id,
            site=config.site,
            stream=stream.name,
            agent_version=__version__,
            clock=clock,
        )

    # -- public surface -------------------------------------------------------

    @property
    def manifest(self) -> ModelManifest:
        """The manifest of the model whose scores are evaluated."""
        return self._manifest

    def use_config(self, config: PolicyConfig) -> None:
        """New on/off delays, rate limits and top-feature count from the next window on (a reload)."""
        self._config = config

    def open_alerts(self) -> dict[str, Severity]:
        """Open alerts: head key → severity."""
        return {k: s.open.severity for k, s in self._heads.items() if s.open is not None}

    def open_alert_records(self) -> list[OpenAlert]:
        """Every open alert of this stream (with those of heads a new model dropped): the retained view."""
        opened = [
            (*key.partition("/")[::2], hs.open) for key, hs in self._heads.items() if hs.open is not None
        ]
        opened += [(component, mode, o) for component, mode, o in self._orphans.values()]
        return [
            OpenAlert(
                alert_id=o.alert_id,
                stream=self._stream,
                component=component,
                failure_mode=mode,
                severity=o.severity,
                score=o.last_score if math.isfinite(o.last_score) else 0.0,
                raised_window=o.raised_index,
                last_event_time=o.last_event_time,
                model=ModelRef(id=o.model_id, version=o.model_version),
            )
            for component, mode, o in sorted(opened, key=lambda item: (item[0], item[1]))
        ]

    def counters(self) -> dict[str, Any]:
        """Events emitted by state, and events suppressed by reason."""
        return self._counters.to_json()

    def evaluate(
        self,
        scores: Mapping[str, npt.NDArray[np.float64]],
        windows: Sequence[WindowRef],
        features: npt.NDArray[np.float64],
        *,
        replayed: bool,
    ) -> list[AlertEvent]:
        """The alert events that a batch of scored windows causes, in window order.

        ``scores`` maps ONNX output names to arrays of shape ``(n_windows, k)``;
        ``windows`` has one `WindowRef` per row; ``features`` is ``(n_windows, n_features)``.
        """
        n = len(windows)
        if n == 0:
            return []
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[0] != n:
            raise ContractError(f"features have shape {feats.shape}, expected ({n}, n_features)")
        columns = self._columns(scores, n)
        heads = [
            (head, self._heads[key], columns[key])
            for head in self._manifest.heads
            for key in (head_key(head.component, head.failure_mode),)
        ]
        events: list[AlertEvent] = []
        row = 0
        while row < n:
            if (
                n - row >= _QUIET_MIN_ROWS
                and not self._orphans
                and all(hs.open is None for _, hs, _ in heads)
            ):
                row = self._skip_quiet(heads, row, n)
                if row >= n:
                    break
            if self._orphans:
                events.extend(self._clear_orphans(windows[row], feats[row], replayed))
            for head, hs, column in heads:
                event = self._step(head, hs, float(column[row]), windows, row, feats, replayed)
                if event is not None:
                    events.append(event)
            row += 1
        return events

    def state(self) -> dict[str, Any]:
        """The policy's state as JSON-able data, to commit with the stream's offsets."""
        return {
            "version": STATE_VERSION,
            "model": self._manifest.label,
            "heads": {k: s.to_json() for k, s in self._heads.items()},
            "orphans": {
                k: {"component": c, "failure_mode": f, "open": o.to_json()}
                for k, (c, f, o) in self._orphans.items()
            },
            "recent": list(self._recent),
            "counters": self._counters.to_json(),
        }

    def restore(self, state: dict[str, Any] | None) -> None:
        """Continue from a state returned by `state` (None: start fresh).

        Heads of the saved state that the current manifest lacks are treated as
        after a model swap: their open alerts are cleared on the next window.
        """
        self._orphans = {}
        self._recent = deque()
        self._counters = _Counters()
        self._reset_heads(self._manifest)
        if state is None:
            return
        if state.get("version") != STATE_VERSION:
            raise ContractError(f"policy state version {state.get('version')!r} is not {STATE_VERSION}")
        self._adopt({str(k): _HeadState.from_json(v) for k, v in dict(state.get("heads", {})).items()})
        for key, item in dict(state.get("orphans", {})).items():
            self._orphans[str(key)] = (
                str(item["component"]),
                str(item["failure_mode"]),
                _OpenAlert.from_json(item["open"]),
            )
        self._recent = deque(float(t) for t in state.get("recent", ()))
        counters = dict(state.get("counters", {}))
        self._counters = _Counters(
            raised=int(counters.get("raised", 0)),
            updated=int(counters.get("updated", 0)),
            cleared=int(counters.get("cleared", 0)),
            suppressed={str(k): int(v) for k, v in dict(counters.get("suppressed", {})).items()},
        )

    def use_model(self, manifest: ModelManifest) -> None:
        """Switch to a new model at a window boundary (see the module docstring)."""
        old = self._heads
        self._manifest = manifest
        self._reset_heads(manifest)
        self._adopt(old)

    # -- internals ------------------------------------------------------------

    def _adopt(self, heads: Mapping[str, _HeadState]) -> None:
        """Take over the state of the heads the model still has; open alerts of the others are orphans."""
        for key, head_state in heads.items():
            if key in self._heads:
                self._heads[key] = head_state
            elif head_state.open is not None:
                component, _, failure_mode = key.partition("/")
                self._orphans[key] = (component, failure_mode, head_state.open)

    def _reset_heads(self, manifest: ModelManifest) -> None:
        self._heads = {head_key(h.component, h.failure_mode): _HeadState() for h in manifest.heads}
        for key in self._heads:
            self._orphans.pop(key, None)

    def _columns(self, scores: Mapping[str, npt.NDArray[np.float64]], n: int) -> dict[str, npt.NDArray[Any]]:
        out: dict[str, npt.NDArray[Any]] = {}
        for head in self._manifest.heads:
            if head.output not in scores:
                raise ContractError(
                    f"scores lack output {head.output!r} of {head.component}/{head.failure_mode}"
                )
            array = np.asarray(scores[head.output], dtype=np.float64)
            if array.ndim == 1:
                array = array.reshape(-1, 1)
            if array.shape[0] != n or array.shape[1] <= head.column:
                raise ContractError(
                    f"output {head.output!r} has shape {array.shape}, need ({n}, >{head.column})"
                )
            out[head_key(head.component, head.failure_mode)] = array[:, head.column]
        return out

    def _skip_quiet(
        self, heads: Sequence[tuple[AlertHead, _HeadState, npt.NDArray[Any]]], row: int, n: int
    ) -> int:
        """Apply, without a Python step per window, the rows from `row` on where no head can emit.

        Only for closed heads and no orphans: there a window only moves the on-delay
        run counter (and a non-finite score also resets the other counters), until
        the run reaches ``on_delay_windows``. Returns the first row left to `_step`
        (`n` when none is).
        """
        on_delay = self._config.on_delay_windows
        stop = n
        runs: list[npt.NDArray[np.int64] | None] = []
        for head, hs, column in heads:
            scores = column[row:n]
            t = head.thresholds
            if head.direction == "higher_is_worse":
                over = (scores >= t.warning) | (scores >= t.critical)
            else:
                over = (scores <= t.warning) | (scores <= t.critical)
            if not over.any():
                runs.append(None)
                continue
            # run[i]: the counter after window row + i (reset by any window not over).
            total = np.cumsum(over)
            not_over = ~over
            last_reset = np.maximum.accumulate(np.where(not_over, total, 0))
            run = total - last_reset + np.where(np.logical_or.accumulate(not_over), 0, hs.over)
            reached = np.flatnonzero(run >= on_delay)
            if reached.size:
                stop = min(stop, row + int(reached[0]))
            runs.append(run)
        if stop == row:
            return row
        length = stop - row
        for (_, hs, column), head_run in zip(heads, runs, strict=True):
            hs.over = 0 if head_run is None else int(head_run[length - 1])
            if not np.isfinite(column[row:stop]).all():
                hs.under = hs.pending = 0
                hs.pending_level = "none"
        return stop

    def _step(
        self,
        head: AlertHead,
        hs: _HeadState,
        score: float,
        windows: Sequence[WindowRef],
        row: int,
        feats: npt.NDArray[np.float64],
        replayed: bool,
    ) -> AlertEvent | None:
        config = self._config
        if not math.isfinite(score):
            hs.over = hs.under = hs.pending = 0
            hs.pending_level = "none"
            return None
        level = level_of(head, score)
        if hs.open is None:
            hs.over = hs.over + 1 if level != "none" else 0
            if hs.over < config.on_delay_windows:
                return None
            assert level != "none"  # over > 0 implies this window is over
            window = windows[row]
            if not self._allow(window, "raised"):
                return None
            threshold = head.thresholds.critical if level == "critical" else head.thresholds.warning
            event = self._event(head, "raised", level, score, threshold, window, feats[row], replayed, None)
            hs.open = _OpenAlert(
                alert_id=event.event_id,
                severity=level,
                model_id=self._manifest.model_id,
                model_version=self._manifest.version,
                model_label=self._manifest.label,
                raised_index=window.index,
                last_event_time=window.end,
                last_score=score,
                clear_threshold=head.thresholds.clear,
            )
            hs.over = hs.under = hs.pending = 0
            hs.pending_level = "none"
            self._counters.raised += 1
            return event

        opened = hs.open
        opened.last_score = score
        opened.clear_threshold = head.thresholds.clear
        if is_clear(head, score):
            hs.under += 1
            hs.pending, hs.pending_level = 0, "none"
            if hs.under < config.off_delay_windows:
                return None
            window = windows[row]
            if not self._allow(window, "cleared"):
                return None
            event = self._event(
                head,
                "cleared",
                None,
                score,
                head.thresholds.clear,
                window,
                feats[row],
                replayed,
                opened.alert_id,
            )
            hs.open = None
            hs.over = hs.under = 0
            self._counters.cleared += 1
            return event
        hs.under = 0
        if level == "none" or level == opened.severity:
            hs.pending, hs.pending_level = 0, "none"
            return None
        if level == hs.pending_level:
            hs.pending += 1
        else:
            hs.pending, hs.pending_level = 1, level
        if hs.pending < config.on_delay_windows:
            return None
        window = windows[row]
        elapsed = window.end - opened.last_event_time
        if -config.min_update_interval_s <= elapsed < config.min_update_interval_s:
            self._suppress("update_interval")  # (a larger negative gap: data time was stepped back)
            return None
        if not self._allow(window, "updated"):
            return None
        threshold = head.thresholds.critical if level == "critical" else head.thresholds.warning
        event = self._event(
            head, "updated", level, score, threshold, window, feats[row], replayed, opened.alert_id
        )
        opened.severity = level
        opened.last_event_time = window.end
        hs.pending, hs.pending_level = 0, "none"
        self._counters.updated += 1
        return event

    def _clear_orphans(
        self, window: WindowRef, row: npt.NDArray[np.float64], replayed: bool
    ) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for key, (component, failure_mode, opened) in list(self._orphans.items()):
            if not self._allow(window, "cleared"):
                continue
            events.append(
                self._stamped(
                    opened.model_label,
                    ModelRef(id=opened.model_id, version=opened.model_version),
                    component,
                    failure_mode,
                    "cleared",
                    None,
                    opened.last_score,
                    opened.clear_threshold,
                    window,
                    replayed,
                    opened.alert_id,
                )
            )
            del self._orphans[key]
            self._counters.cleared += 1
        return events

    def _allow(self, window: WindowRef, state: AlertState) -> bool:
        """The per-policy events-per-minute budget, in data time."""
        now = window.end
        while self._recent and self._recent[-1] > now + _RATE_WINDOW_S:
            self._recent.pop()  # counted in a data future: data time was stepped back
        while self._recent and self._recent[0] <= now - _RATE_WINDOW_S:
            self._recent.popleft()
        if len(self._recent) >= self._config.max_events_per_minute:
            self._suppress(f"rate_limit_{state}")
            return False
        self._recent.append(now)
        return True

    def _suppress(self, reason: str) -> None:
        self._counters.suppressed[reason] = self._counters.suppressed.get(reason, 0) + 1

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.wall(), tz=timezone.utc)

    def _event(
        self,
        head: AlertHead,
        state: AlertState,
        severity: Severity | None,
        score: float,
        threshold: float,
        window: WindowRef,
        row: npt.NDArray[np.float64],
        replayed: bool,
        alert_id: str | None,
    ) -> AlertEvent:
        manifest = self._manifest
        return self._stamped(
            manifest.label,
            ModelRef(id=manifest.model_id, version=manifest.version),
            head.component,
            head.failure_mode,
            state,
            severity,
            score,
            threshold,
            window,
            replayed,
            alert_id,
            explain(manifest, row, self._config.top_features),
        )

    def _stamped(
        self,
        model_label: str,
        model: ModelRef,
        component: str,
        failure_mode: str,
        state: AlertState,
        severity: Severity | None,
        score: float,
        threshold: float,
        window: WindowRef,
        replayed: bool,
        alert_id: str | None,
        top_features: tuple[FeatureContribution, ...] = (),
    ) -> AlertEvent:
        """An event of this policy's robot and stream; its id derives from model, head, window and state."""
        event_id = derive_event_id(
            self._robot_id, self._stream, model_label, component, failure_mode, window.index, state
        )
        return AlertEvent(
            event_id=event_id,
            alert_id=alert_id or event_id,
            robot_id=self._robot_id,
            site=self._site,
            stream=self._stream,
            component=component,
            failure_mode=failure_mode,
            state=state,
            severity=severity,
            score=score,
            threshold=threshold,
            window=window,
            model=model,
            top_features=top_features,
            agent_version=self._agent_version,
            replayed=replayed,
            emitted_at=self._now(),
        )
