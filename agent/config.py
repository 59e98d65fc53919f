"""The agent's configuration: the ``[agent]`` table of config.toml, validated by pydantic.

The file, its profiles and environment overrides are read by
`agent.contract.configfile`, which the trainer shares; relative paths are resolved
against the directory of the config file. Secrets (MQTT passwords, keys) never live
in this file: the config names a credentials file or environment variables instead.

Any problem raises `ConfigError` naming the file, the dotted key and the problem;
the CLIs turn it into exit code 2.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.contract.announcement import BUNDLE_OVERHEAD_BYTES
from agent.contract.configfile import ConfigSection as _Section
from agent.contract.configfile import load_section
from agent.contract.streams import StreamConfig
from agent.contract.timerule import DEFAULT_JUMP_S, DEFAULT_REBASE_LINES, DEFAULT_TOLERANCE_S
from agent.contract.topics import check_segment
from agent.technician.settings import ControlConfig, JournalConfig, LoggingConfig, ShelvingConfig

DEFAULT_OP_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
"""The operator domains a model may use unless ``agent.model.allowed_op_domains`` says otherwise."""


class IngestConfig(_Section):
    """How log files are followed and validated."""

    watch: Literal["auto", "inotify", "poll"] = Field(
        default="auto", description="auto: inotify with a stat poll as safety net; poll: stat only."
    )
    poll_interval_s: float = Field(default=0.25, gt=0, le=60, description="Safety-net stat poll period.")
    coalesce_ms: float = Field(default=5.0, ge=0, le=1000, description="Batch file events over this long.")
    read_chunk_bytes: int = Field(default=1 << 20, ge=4096)
    max_line_bytes: int = Field(default=64 * 1024, ge=64)
    backwards_tolerance_s: float = Field(
        default=DEFAULT_TOLERANCE_S,
        ge=0,
        le=3600,
        description="A record time this far before the stream's newest is still accepted; further back it is "
        "refused as time_backwards (see agent.contract.timerule).",
    )
    time_jump_s: float = Field(
        default=DEFAULT_JUMP_S,
        gt=0,
        le=100 * 365 * 86400,
        description="A record time further than this from the stream's newest (either way) is refused as "
        "time_outlier and does not move the stream's clock (a year-3000 line cannot silence the stream).",
    )
    time_rebase_lines: int = Field(
        default=DEFAULT_REBASE_LINES,
        ge=2,
        le=10_000,
        description="This many time_outlier lines in a row that agree with each other are a genuine clock "
        "step: the stream's clock follows them from the last of them on.",
    )
    rescan_interval_s: float = Field(default=1.0, gt=0, le=300)

    @field_validator("time_jump_s")
    @classmethod
    def _jump_beyond_tolerance(cls, value: float, info: ValidationInfo) -> float:
        # backwards_tolerance_s is declared first, so it is validated (and in info.data) by now.
        tolerance = info.data.get("backwards_tolerance_s", DEFAULT_TOLERANCE_S)
        if value <= tolerance:
            raise ValueError(f"must be larger than backwards_tolerance_s ({tolerance})")
        return value

    checkpoint_interval_s: float = Field(default=1.0, gt=0, le=60)
    max_hold_s: float = Field(
        default=0.5,
        ge=0,
        le=60,
        description="Lines too few to complete a window are held (read, not yet parsed) at most this long;"
        " the line that completes a window is scored at once. 0: parse every read at once.",
    )
    quarantine_max_bytes: int = Field(default=64 << 20, ge=1024)
    retry_max_s: float = Field(
        default=60.0,
        ge=1.0,
        le=3600,
        description="A stream that failed (permission, vanished directory, I/O error, too many open files)"
        " is reported degraded and retried after 1 s, then twice as long each time, at most this long.",
    )
    max_open_files: int = Field(
        default=256,
        ge=4,
        le=65536,
        description="Log files one stream holds open at most. Files read to their end are closed (rotated"
        " ones once unchanged for release_after_s); files past the bound wait, oldest read first. Keep"
        " streams x this well under the unit's LimitNOFILE (4096).",
    )
    release_after_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="A file that left the directory is closed once read to its end and unchanged this long;"
        " a rotated file's unterminated last line is quarantined after this long.",
    )


def packaged_model() -> Path:
    """The bundled model shipped inside the installed agent package (``agent/models/bundled``)."""
    return Path(str(resources.files("agent.models").joinpath("bundled")))


class ModelConfig(_Section):
    """Where the model comes from, and which signatures it needs (see `agent.models.verify`)."""

    directory: Path = Field(description="Model store: one sub-directory per version.")
    bundled: Path | None = Field(
        default_factory=packaged_model,
        description="Used when the store is empty; default: the model packaged with the agent.",
    )
    check_interval_s: float = Field(default=1.0, gt=0, le=3600)
    require_signature: bool = Field(
        default=False,
        description="Refuse to start unless trusted_keys is set (it already makes signatures mandatory).",
    )
    probation_windows: int = Field(
        default=50,
        ge=0,
        le=1_000_000,
        description="Windows (summed over all streams) a verified newer model is shadow-scored before it "
        "drives alerts; 0 swaps it in at once.",
    )
    probation_max_alert_rate: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Roll the candidate back if the share of probation windows on which it reaches a "
        "warning threshold is above this …",
    )
    probation_alert_margin: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="… and also above the current model's share on the same windows by more than this.",
    )
    probation_min_s: float = Field(
        default=0.0,
        ge=0.0,
        le=30 * 86400,
        description="A probation also lasts at least this many seconds (summed over restarts), however many "
        "windows it scored.",
    )
    probation_max_latency_ms: float = Field(
        default=250.0,
        gt=0.0,
        le=60_000.0,
        description="Roll the candidate back if its mean scoring call over the probation took longer.",
    )
    confirm_windows: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="After a swap, the new model is on trial until it scored this many windows: if the agent "
        "dies before (crash, kill, OOM), the model is marked bad on disk and the previous one serves on the "
        "next start.",
    )
    on_expiry: Literal["keep_serving", "fall_back"] = Field(
        default="keep_serving",
        description="When the running model has expired: keep_serving it (reported in its status and a model "
        "event), or fall_back at the next start to the newest unexpired version (reported too).",
    )
    trusted_keys: Path | None = Field(
        default=None,
        validate_default=True,
        description="Directory of the fleet's root public keys (<root_id>.pub, Ed25519 PEM) and optionally a "
        "root-signed revocations.signed; when set, every model and announcement must be signed by a release "
        "key a root certified. Reloaded without a restart on SIGHUP. The bundled model is exempt.",
    )
    max_model_bytes: int = Field(
        default=16 << 20, ge=1024, le=1 << 30, description="A model.onnx larger than this is refused unread."
    )
    min_golden_vectors: int = Field(
        default=3, ge=1, le=10_000, description="A manifest with fewer golden vectors is refused."
    )
    allowed_op_domains: tuple[str, ...] = Field(
        default=DEFAULT_OP_DOMAINS,
        description="Operator domains a model may use ('' and 'ai.onnx' are the standard domain).",
    )
    allowed_ops: tuple[str, ...] | None = Field(
        default=None, description="If set, the only operator types a model may use (in the allowed domains)."
    )
    isolate: bool = Field(
        default=True,
        description="Load and golden-test each store model in a child process with the probe_* limits "
        "before the agent itself loads it.",
    )
    probe_memory_bytes: int = Field(
        default=256 << 20,
        ge=16 << 20,
        le=64 << 30,
        description="Address space the model-loading child may add beyond the runtime it starts with.",
    )
    probe_cpu_s: float = Field(default=10.0, gt=0, le=3600, description="CPU seconds of the child.")
    probe_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="Wall-clock seconds of the child."
    )
    store_max_bytes: int = Field(
        default=128 << 20,
        ge=1 << 20,
        description="The store (versions, partial downloads) may not grow past this; old versions are "
        "pruned.",
    )
    inbox: Path | None = Field(
        default=None,
        description="A directory (e.g. a technician's USB stick) whose signed bundles (*.tar) and "
        "revocations.signed are installed with the same checks as downloads.",
    )

    channel: str | None = Field(
        default=None,
        description="Follow the retained announcements on robotpm/v1/models/<channel> and download the "
        "bundles they name into the store; None: only models dropped into the store are used.",
    )
    index_url: str | None = Field(
        default=None,
        description="HTTPS URL of the channel's signed announcement (robotpm-train publish writes it), "
        "polled "
        "with If-None-Match every index_interval_s so a robot that missed MQTT still converges.",
    )
    index_interval_s: float = Field(default=900.0, ge=1, le=86400, description="Polling period of index_url.")
    download_max_bytes: int = Field(
        default=0,
        ge=0,
        description="A bundle larger than this is refused (cut off while streaming); 0 (default): "
        "max_model_bytes plus room for manifest and signatures. It may not be larger than that.",
    )
    download_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Per connect and per read (a stalled server)."
    )
    download_deadline_s: float = Field(
        default=600.0, gt=0, le=86400, description="A whole download (a trickling server) ends after this."
    )
    retry_first_s: float = Field(
        default=2.0, gt=0, le=3600, description="The first wait after a failed fetch."
    )
    retry_max_s: float = Field(
        default=3600.0,
        gt=0,
        le=86400,
        description="Waits double (with jitter) up to this; fetching never gives up.",
    )
    allow_http: bool = Field(
        default=False, description="Accept http:// bundle URLs (and redirects to them); https only otherwise."
    )
    download_ca_file: Path | None = Field(
        default=None,
        description="CA certificates (PEM) the bundle server must chain to; default: the system trust store.",
    )

    @field_validator("channel")
    @classmethod
    def _channel_segment(cls, value: str | None) -> str | None:
        return None if value is None else check_segment(value, "model channel")

    @model_validator(mode="after")
    def _caps(self) -> ModelConfig:
        bundle_cap = self.max_model_bytes + BUNDLE_OVERHEAD_BYTES
        if self.download_max_bytes == 0:
            object.__setattr__(self, "download_max_bytes", bundle_cap)  # frozen: set once, while validating
        elif self.download_max_bytes > bundle_cap:
            raise ValueError(
                f"download_max_bytes {self.download_max_bytes} exceeds what a bundle of a model within "
                f"max_model_bytes can need ({bundle_cap})"
            )
        if self.store_max_bytes < 2 * self.download_max_bytes:
            raise ValueError(
                f"store_max_bytes {self.store_max_bytes} must hold two bundles of download_max_bytes "
                f"{self.download_max_bytes} (a partial download and its unpacked copy)"
            )
        return self

    @field_validator("download_ca_file")
    @classmethod
    def _ca_beside_config(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Relative paths are resolved by key name in _resolve_paths; this key is resolved here.
        base = info.context.get("base") if isinstance(info.context, dict) else None
        if value is not None and not value.is_absolute() and isinstance(base, Path):
            return (base / value).resolve()
        return value

    @field_validator("trusted_keys")
    @classmethod
    def _keys_for_required_signatures(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # require_signature is declared first, so it is validated (and in info.data) by now.
        if value is None and info.data.get("require_signature"):
            raise ValueError(
                "require_signature = true needs trusted_keys: a directory of <key_id>.pub public keys"
            )
        return value


class TlsConfig(_Section):
    """MQTT over TLS; the server certificate is always verified."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_hostname: str | None = None


def is_loopback(host: str) -> bool:
    """Whether a broker host is this machine (localhost, 127.0.0.0/8, ::1): nothing crosses a network."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


PLAINTEXT_CREDENTIALS_REFUSED = (
    "credentials are configured but TLS is not: the password would cross the network in clear "
    '(set [agent.mqtt.tls], or plaintext_credentials = "warn" outside production)'
)


class MqttConfig(_Section):
    """The broker connection. Credentials come from `credentials_file` or the environment."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    client_id: str | None = Field(default=None, description="Defaults to robotpm-<robot_id>.")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    max_inflight: int = Field(default=20, ge=1, le=1000)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    credentials_file: Path | None = Field(
        default=None, description="A file 'username:password' (e.g. a systemd credential)."
    )
    plaintext_credentials: Literal["warn", "refuse"] = Field(
        default="warn",
        description="Credentials configured without [agent.mqtt.tls] would cross the network in clear: "
        "warn (log mqtt_credentials_without_tls) or refuse to start (exit 2 naming agent.mqtt.tls). "
        "A broker on the loopback interface (e.g. a local bridge) is exempt: nothing leaves the machine.",
    )
    tls: TlsConfig | None = Field(default=None, validate_default=True)
    will_delay_s: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="MQTT 5 Will Delay: a reconnect within this long sends no 'offline' (anti-flapping).",
    )
    username_env: str = "ROBOTPM_MQTT_USERNAME"
    password_env: str = "ROBOTPM_MQTT_PASSWORD"

    @field_validator("tls")
    @classmethod
    def _tls_for_a_credentials_file(cls, value: TlsConfig | None, info: ValidationInfo) -> TlsConfig | None:
        # credentials_file and plaintext_credentials are declared first, so they are in info.data.
        # Credentials from the environment are checked when the transport reads them.
        if (
            value is None
            and info.data.get("credentials_file") is not None
            and info.data.get("plaintext_credentials") == "refuse"
            and not is_loopback(str(info.data.get("host", "")))
        ):
            raise ValueError(PLAINTEXT_CREDENTIALS_REFUSED)
        return value


class PolicyConfig(_Section):
    """How scores become alerts."""

    on_delay_windows: int = Field(default=2, ge=1, description="Consecutive windows over before raising.")
    off_delay_windows: int = Field(
        default=3, ge=1, description="Consecutive windows under clear before clearing."
    )
    min_update_interval_s: float = Field(default=0.0, ge=0, description="Rate limit of 'updated' events.")
    max_events_per_minute: int = Field(
        default=120,
        ge=1,
        description="Per stream, in data time; excess events are held back, counted, and retried later.",
    )
    top_features: int = Field(default=5, ge=0, le=50)


class OutboxConfig(_Section):
    """The durable outbox in front of MQTT."""

    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    alert_ttl_s: float = Field(default=7 * 24 * 3600, gt=0)
    telemetry_ttl_s: float = Field(default=24 * 3600, gt=0)


class DriftConfig(_Section):
    """When a stream's features count as drifted from the training data (see `agent.streams.drift`)."""

    psi_raise: float = Field(
        default=0.25, gt=0, description="A feature drifts at this PSI against its bins …"
    )
    psi_clear: float = Field(default=0.1, ge=0, description="… and is back once under this (hysteresis).")
    shift_raise: float = Field(
        default=2.0, gt=0, description="… and when its running mean moved this many training stds …"
    )
    shift_clear: float = Field(default=1.0, ge=0, description="… back once under this.")
    min_features: int = Field(default=1, ge=1, description="Drifting features that make the stream drift.")
    half_life_windows: float = Field(default=500.0, gt=1, description="Memory of the running statistics.")
    warmup_windows: int = Field(default=50, ge=1, description="Windows before the mean shift is judged.")
    psi_min_windows: float = Field(
        default=400.0,
        ge=10,
        description="Effective windows (after decay) before PSI is judged: small samples inflate PSI.",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> DriftConfig:
        if self.psi_clear > self.psi_raise or self.shift_clear > self.shift_raise:
            raise ValueError("clear thresholds must not exceed raise thresholds")
        return self


class MetricsConfig(_Section):
    """The Prometheus node_exporter textfile (see `agent.metrics`)."""

    textfile: Path | None = Field(
        default=None,
        description="Write metrics here each heartbeat (atomically), e.g. "
        "/var/lib/prometheus/node-exporter/robotpm.prom; None: off.",
    )


class AgentConfig(_Section):
    """The `[agent]` table."""

    robot_id: str
    site: str = "default"
    state_dir: Path
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    heartbeat_interval_s: float = Field(default=30.0, gt=0)
    stop_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="From SIGTERM to exit at most this long, whatever the network does (the final commit"
        " comes first); keep it below the unit's TimeoutStopSec.",
    )
    hang_report_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="A step (loading a model, reading a stream) running longer is reported stuck; if the"
        " agent then dies, the next start skips that model or stream (see agent.crashguard).",
    )
    streams: tuple[StreamConfig, ...] = Field(min_length=1)
    model: ModelConfig
    mqtt: MqttConfig = MqttConfig()
    ingest: IngestConfig = IngestConfig()
    policy: PolicyConfig = PolicyConfig()
    outbox: OutboxConfig = OutboxConfig()
    journal: JournalConfig = JournalConfig()
    shelving: ShelvingConfig = ShelvingConfig()
    control: ControlConfig = ControlConfig()
    logging: LoggingConfig = LoggingConfig()
    drift: DriftConfig = DriftConfig()
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("robot_id", "site")
    @classmethod
    def _segment(cls, value: str) -> str:
        return check_segment(value, "id")

    @model_validator(mode="after")
    def _unique_streams(self) -> AgentConfig:
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique, got {names}")
        return self


AGENT_PATH_KEYS = frozenset(
    {
        "directory",
        "bundled",
        "state_dir",
        "trusted_keys",
        "ca_file",
        "cert_file",
        "key_file",
        "credentials_file",
        "inbox",
        "file",
        "textfile",
    }
)
"""The agent's keys whose relative paths resolve against the config file's directory."""


def load_agent_config(
    path: Path, profile: str | None = None, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Load the ``[agent]`` table of a config file."""
    return load_section(path, "agent", AgentConfig, profile, environ, AGENT_PATH_KEYS)
