"""The ``[trainer]`` table of config.toml, validated by pydantic.

The trainer shares config.toml (and its profiles and ``ROBOTPM__TRAINER__…``
environment overrides) with the agent; see `agent.contract.configfile` for the resolution
order. The channel mapping that turns a controller's column names into canonical
channels is read from the agent stream named by ``trainer.stream``, so both
halves read the same files the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.contract.configfile import ConfigSection as _Section
from agent.contract.configfile import load_document, validate_section
from agent.contract.errors import ConfigError
from agent.contract.features import FeatureSpec, Statistic
from agent.contract.records import RecordSchema
from agent.contract.sampling import Sampling
from agent.contract.streams import STREAM_PATH_KEYS, StreamConfig
from agent.contract.timerule import DEFAULT_JUMP_S, DEFAULT_REBASE_LINES, DEFAULT_TOLERANCE_S, TimeRule

DEFAULT_CHANNELS: dict[str, str] = {
    **{f"A{j}_I": f"j{j}_current" for j in range(1, 7)},
    **{f"A{j}_T": f"j{j}_temp" for j in range(1, 7)},
    **{f"A{j}_V": f"j{j}_speed" for j in range(1, 7)},
    "TOOL_I": "tool_current",
}
"""The simulator's column names → canonical channels, used when no config file is given."""

TRAINER_PATH_KEYS = frozenset({"registry", "incoming", "reports_dir", "work_dir", "directory", "event_log"})
"""The trainer's keys whose relative paths resolve against the config file's directory."""

ModelKind = Literal[
    "random_forest",
    "extra_trees",
    "hist_gradient_boosting",
    "logistic_regression",
    "isolation_forest",
]


class FeatureConfig(_Section):
    """How training windows are cut: the feature spec written into the manifest."""

    window: int = Field(default=400, ge=2, description="Samples per window (400 = one 8 s cycle at 50 Hz).")
    hop: int = Field(default=100, ge=1, description="Samples between window starts.")
    statistics: tuple[Statistic, ...] = ("mean", "std", "min", "max")
    resample_hz: float | None = Field(
        default=None,
        gt=0,
        description="Resample each robot onto a regular grid at this rate (None: as logged).",
    )
    max_gap_s: float = Field(
        default=1.0, gt=0, description="Resampling never bridges a gap longer than this."
    )
    window_s: float | None = Field(
        default=None, gt=0, description="Seconds per window, instead of `window` (whole samples at the rate)."
    )
    hop_s: float | None = Field(
        default=None, gt=0, description="Seconds between window starts, with window_s."
    )

    def spec(self, channels: tuple[str, ...], rate_hz: float | None = None) -> FeatureSpec:
        """The `FeatureSpec` for these canonical channels, at the training data's rate when known.

        The rate (``resample_hz``, else the rate measured on the training data) goes into the
        spec's sampling, so the agent can tell data at another rate; windows in seconds need it.
        """
        sampling = None if rate_hz is None else Sampling(rate_hz=rate_hz, max_gap_s=self.max_gap_s)
        if self.window_s is not None or self.hop_s is not None:
            return FeatureSpec.model_validate(  # window and hop: whole samples at the rate
                {
                    "channels": channels,
                    "window_s": self.window_s,
                    "hop_s": self.hop_s,
                    "statistics": self.statistics,
                    "sampling": sampling,
                }
            )
        return FeatureSpec(
            channels=channels, window=self.window, hop=self.hop, statistics=self.statistics, sampling=sampling
        )


class FlagLabels(_Section):
    """Failure events from a flag or state column of the log itself (e.g. a protective-stop flag).

    A sample is "on" when its value, as written, is one of `on` (compared after trimming
    blanks and quotes). An event starts at each rising edge (off → on) and ends at the last
    on sample; an edge closer than `min_gap_s` to the end of the event before it is part of
    that event (counted as merged).
    """

    column: str = Field(min_length=1, description="The column's name in the file, exactly as written.")
    on: tuple[str, ...] = Field(default=("1", "true", "True", "TRUE"), min_length=1)
    min_gap_s: float = Field(default=60.0, ge=0, description="Edges closer than this are one event.")
    failure_mode: str = Field(default="stop", min_length=1, description="The mode these events are.")
    component: str = Field(default="robot", min_length=1)


class EventLogLabels(_Section):
    """Failure events from the controller's fault or stop log (CSV with a header, or JSON lines).

    Field names are the log's own; `modes` renames the controller's codes (unnamed ones are
    kept as written). Robots are matched by the log directory's name.
    """

    event_log: Path = Field(description="The event log file (.csv or .jsonl); relative to the config file.")
    time: str = "time"
    robot: str = "robot"
    component: str | None = "component"
    mode: str = "failure_mode"
    end: str | None = Field(default=None, description="Field holding the event's end (optional).")
    modes: dict[str, str] = Field(default_factory=dict, description="Controller code → failure mode.")
    default_component: str = Field(default="robot", min_length=1)
    min_gap_s: float = Field(default=0.0, ge=0, description="Events of one robot closer than this are one.")


class LabelConfig(_Section):
    """Where labels come from and how a window gets its label from them.

    ``source = "truth"`` reads the simulator's ``truth.csv`` beside each log; ``"flag"``
    takes failure events from a column of the log (`flag`); ``"events"`` from an event log
    (`events`). With events, a window is labelled with the event's mode when the event's
    onset is at most `horizon_s` after the window's end; windows during an event are left out.
    """

    source: Literal["truth", "flag", "events"] = "truth"
    flag: FlagLabels | None = None
    events: EventLogLabels | None = None
    horizon_s: float = Field(
        default=600.0, gt=0, description="A fault that fails within this long labels the window."
    )
    tolerance_s: float = Field(
        default=1e-4,
        ge=0,
        description="A truth row or event time matches the nearest log sample at most this far away.",
    )
    health_threshold: float = Field(
        default=0.5, ge=0, le=1, description="A fault with health at or below this labels the window."
    )
    max_positive_health: float = Field(
        default=0.85,
        ge=0,
        le=1,
        description="A fault healthier than this is never a positive: nothing shows yet.",
    )
    exclude_after_failure_s: float = Field(
        default=20.0, ge=0, description="Windows overlapping a failure or this long after it are left out."
    )

    @model_validator(mode="after")
    def _source_table(self) -> LabelConfig:
        if self.source == "flag" and self.flag is None:
            raise ValueError("source 'flag' needs a [trainer.labels.flag] table (column = ...)")
        if self.source == "events" and self.events is None:
            raise ValueError("source 'events' needs a [trainer.labels.events] table (event_log = ...)")
        return self


class ModelParams(_Section):
    """The estimator and its size (the bundled model must stay under `max_model_bytes`)."""

    kind: ModelKind = "random_forest"
    n_estimators: int = Field(default=40, ge=1, le=2000)
    max_depth: int | None = Field(default=10, ge=1)
    min_samples_leaf: int = Field(default=5, ge=1)
    max_leaf_nodes: int | None = Field(default=None, ge=2)
    learning_rate: float = Field(default=0.1, gt=0, le=1)
    class_weight: Literal["balanced", "none"] = "balanced"
    n_jobs: int = Field(
        default=1, ge=1, le=64, description="Threads for forests (results do not depend on it)."
    )
    projection: bool = Field(
        default=True, description="Ambient-free temperature and current contrasts in front of the trees."
    )


class ThresholdConfig(_Section):
    """Calibration of alert thresholds on held-out healthy windows."""

    warning_false_alarm_rate: float = Field(default=0.01, gt=0, lt=1)
    critical_false_alarm_rate: float = Field(default=0.001, gt=0, lt=1)
    min_warning: float = Field(default=0.35, ge=0, le=1, description="Floor of the warning threshold.")
    min_critical: float = Field(default=0.6, ge=0, le=1, description="Floor of the critical threshold.")
    clear_ratio: float = Field(default=0.7, gt=0, le=1, description="clear = warning × this (hysteresis).")

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdConfig:
        if self.critical_false_alarm_rate > self.warning_false_alarm_rate:
            raise ValueError("critical_false_alarm_rate must not exceed warning_false_alarm_rate")
        if self.min_critical < self.min_warning:
            raise ValueError("min_critical must not be below min_warning")
        return self


class SelectionConfig(_Section):
    """Model selection: candidates, grouped time-aware cross-validation, the deciding metric."""

    metric: Literal["pr_auc", "f1_macro", "recall_at_far", "rmse", "phm_score"] = "pr_auc"
    candidates: tuple[ModelKind, ...] = ("random_forest",)
    folds: int = Field(default=3, ge=2, le=20)


class ParityConfig(_Section):
    """How closely ONNX outputs must match scikit-learn on the test set."""

    tolerance: float = Field(default=1e-4, gt=0)
    max_mismatch_fraction: float = Field(
        default=0.0, ge=0, lt=1, description="Share of rows allowed to exceed tolerance (tree ties)."
    )


class BundleConfig(_Section):
    """The simulated history the bundled default model is trained on."""

    robots: int = Field(default=40, ge=2)
    hours: float = Field(default=1.0, gt=0)
    rate_hz: float = Field(default=50.0, gt=0, description="The live demo's rate: windows are in samples.")
    test_robots: int = Field(default=4, ge=1)
    max_model_bytes: int = Field(default=1_000_000, ge=1024)


class StreamTrainerConfig(_Section):
    """Stream mode: watch an incoming directory and retrain when enough new data arrived."""

    incoming: Path = Path("var/trainer/incoming")
    min_new_rows: int = Field(default=100_000, ge=1)
    poll_interval_s: float = Field(default=5.0, gt=0)


class TrainerConfig(_Section):
    """The ``[trainer]`` table."""

    stream: str = Field(default="arm1", description="Agent stream whose channel mapping reads the logs.")
    channels: dict[str, str] | None = Field(
        default=None, description="Column → canonical channel; defaults to the agent stream's mapping."
    )
    timestamp_field: str = "ts"
    reading: dict[str, Any] = Field(
        default_factory=dict,
        description="How the log files are read (delimiter, quote, decimal, timestamp_unit, timezone, "
        "timestamp_kind), as the agent stream's keys of the same names; defaults to that stream's.",
    )
    limits: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Canonical channel → accepted range; defaults to the agent stream's.",
    )
    backwards_tolerance_s: float | None = Field(
        default=None, ge=0, description="Defaults to agent.ingest.backwards_tolerance_s (the agent's rule)."
    )
    time_jump_s: float | None = Field(default=None, gt=0, description="Defaults to agent.ingest.time_jump_s.")
    time_rebase_lines: int | None = Field(
        default=None, ge=2, description="Defaults to agent.ingest.time_rebase_lines."
    )
    registry: Path = Path("models")
    work_dir: Path = Path("var/trainer")
    model_name: str = Field(default="robot-arm", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = 7
    features: FeatureConfig = FeatureConfig()
    labels: LabelConfig = LabelConfig()
    model: ModelParams = ModelParams()
    thresholds: ThresholdConfig = ThresholdConfig()
    selection: SelectionConfig = SelectionConfig()
    parity: ParityConfig = ParityConfig()
    bundle: BundleConfig = BundleConfig()
    incoming: StreamTrainerConfig = StreamTrainerConfig()

    @field_validator("reading")
    @classmethod
    def _reading_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(READING_KEYS))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; known: {list(READING_KEYS)}")
        RecordSchema(channels={"x": "x"}, **value)  # raises naming what cannot work
        return value

    def record_schema(self) -> RecordSchema:
        """How the sensor log files are read."""
        return RecordSchema(
            format="csv",
            timestamp_field=self.timestamp_field,
            channels=self.channels or DEFAULT_CHANNELS,
            limits=self.limits,
            **self.reading,
        )

    def time_rule(self) -> TimeRule:
        """The rule the log files' times are judged by: the agent's (`agent.contract.timerule`)."""
        return TimeRule(
            DEFAULT_TOLERANCE_S if self.backwards_tolerance_s is None else self.backwards_tolerance_s,
            DEFAULT_JUMP_S if self.time_jump_s is None else self.time_jump_s,
            DEFAULT_REBASE_LINES if self.time_rebase_lines is None else self.time_rebase_lines,
            uptime=self.record_schema().timestamp_kind == "uptime",
        )

    @property
    def canonical_channels(self) -> tuple[str, ...]:
        """Canonical channel names in mapping order."""
        return self.record_schema().canonical_channels


def load_trainer_config(
    path: Path | None, profile: str | None = None, environ: dict[str, str] | None = None
) -> TrainerConfig:
    """Load ``[trainer]`` from a config file (defaults when `path` is None); raises `ConfigError`."""
    if path is None:
        return TrainerConfig()
    document = load_document(path, profile, environ)
    raw: dict[str, Any] = dict(document.get("trainer") or {})
    document["trainer"] = raw
    ingest = (document.get("agent") or {}).get("ingest") or {}
    for key in ("backwards_tolerance_s", "time_jump_s", "time_rebase_lines"):
        if key not in raw and isinstance(ingest, dict) and key in ingest:
            raw[key] = ingest[key]  # one time rule for both halves
    config = validate_section(document, "trainer", TrainerConfig, TRAINER_PATH_KEYS)
    try:
        config.time_rule()
    except ValueError as exc:
        raise ConfigError(
            document.get("_meta", {}).get("path", "config"), "trainer.time_jump_s", str(exc)
        ) from None
    stream = _agent_stream(document, config.stream)
    if stream is not None and not config.reading:
        config = config.model_copy(update={"reading": {key: getattr(stream, key) for key in READING_KEYS}})
    if config.channels is None and stream is not None:
        update: dict[str, Any] = {
            "channels": dict(stream.channels),
            "timestamp_field": stream.timestamp_field,
        }
        if not config.limits:
            update["limits"] = dict(stream.limits)
        config = config.model_copy(update=update)
    return config


READING_KEYS = ("delimiter", "quote", "decimal", "timestamp_unit", "timezone", "timestamp_kind")
"""The stream keys that say how a log's lines are read: the trainer reads them as the agent does."""


def _agent_stream(document: dict[str, Any], name: str) -> StreamConfig | None:
    streams = (document.get("agent") or {}).get("streams") or []
    for index, raw in enumerate(streams):
        if isinstance(raw, dict) and raw.get("name") == name:
            wrapped = {**document, "_stream": raw}
            try:
                return validate_section(wrapped, "_stream", StreamConfig, STREAM_PATH_KEYS)
            except ConfigError as exc:
                path = document.get("_meta", {}).get("path", "config")
                raise ConfigError(path, f"agent.streams[{index}]", exc.problem) from None
    return None
