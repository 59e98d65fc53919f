"""Configuration: one TOML file for agent and trainer, with profiles and environment overrides.

Resolution order, later wins:

1. the file's top-level tables (``[agent]``, ``[trainer]``);
2. the selected profile's tables (``[profiles.<name>.agent]`` …), merged key by key;
   the profile is ``--profile``, else ``$ROBOTPM_PROFILE``, else ``robotpm.profile``
   in the file, else none;
3. environment variables ``ROBOTPM__<SECTION>__<KEY>…`` (double underscores separate
   levels; values are read as TOML literals when they parse, else as strings), e.g.
   ``ROBOTPM__AGENT__MQTT__PORT=1884``.

Relative paths are resolved against the directory of the config file. Secrets
(MQTT passwords, keys) never live in this file: the config names a credentials
file or environment variables instead.

Any problem raises `ConfigError` naming the file, the dotted key and the problem;
the CLIs turn it into exit code 2.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.contract.records import RecordFormat, RecordSchema
from agent.contract.topics import check_segment
from agent.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "ROBOTPM__"
PROFILE_ENV = "ROBOTPM_PROFILE"

ModelT = TypeVar("ModelT", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IngestConfig(_Section):
    """How log files are followed and validated."""

    watch: Literal["auto", "inotify", "poll"] = Field(
        default="auto", description="auto: inotify with a stat poll as safety net; poll: stat only."
    )
    poll_interval_s: float = Field(default=0.25, gt=0, le=60, description="Safety-net stat poll period.")
    coalesce_ms: float = Field(default=5.0, ge=0, le=1000, description="Batch file events over this long.")
    read_chunk_bytes: int = Field(default=1 << 20, ge=4096)
    max_line_bytes: int = Field(default=64 * 1024, ge=64)
    backwards_tolerance_s: float = Field(default=1.0, ge=0)
    rescan_interval_s: float = Field(default=1.0, gt=0, le=300)
    checkpoint_interval_s: float = Field(default=1.0, gt=0, le=60)
    max_hold_s: float = Field(
        default=0.5,
        ge=0,
        le=60,
        description="Lines too few to complete a window are held (read, not yet parsed) at most this long;"
        " the line that completes a window is scored at once. 0: parse every read at once.",
    )
    quarantine_max_bytes: int = Field(default=64 << 20, ge=1024)
    release_after_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="A file that left the directory is closed once read to its end and unchanged this long;"
        " a rotated file's unterminated last line is quarantined after this long.",
    )


class StreamConfig(_Section):
    """One sensor stream: a log directory of one robot arm (or other asset)."""

    name: str = Field(description="Stream id, unique per agent, e.g. 'arm1'.")
    directory: Path
    patterns: tuple[str, ...] = ("*.csv",)
    format: RecordFormat = "csv"
    timestamp_field: str = "timestamp"
    channels: dict[str, str] = Field(
        min_length=1, description="Column name in the file → canonical channel name."
    )
    limits: dict[str, tuple[float, float]] = Field(default_factory=dict)
    robot_id: str | None = Field(default=None, description="Defaults to agent.robot_id.")

    @field_validator("name")
    @classmethod
    def _segment(cls, value: str) -> str:
        return check_segment(value, "stream name")

    def record_schema(self) -> RecordSchema:
        """The `RecordSchema` this stream's lines follow."""
        return RecordSchema(
            format=self.format,
            timestamp_field=self.timestamp_field,
            channels=self.channels,
            limits=self.limits,
        )


class ModelConfig(_Section):
    """Where the model comes from, and which signatures it needs (see `agent.models.verify`)."""

    directory: Path = Field(description="Model store: one sub-directory per version.")
    bundled: Path | None = Field(default=None, description="Used when the store is empty.")
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
    trusted_keys: Path | None = Field(
        default=None,
        validate_default=True,
        description="Directory of <key_id>.pub Ed25519 public keys (PEM); when set, every model in the "
        "store must be signed by one of them. The bundled model is exempt.",
    )

    channel: str | None = Field(
        default=None,
        description="Follow the retained announcements on robotpm/v1/models/<channel> and download the "
        "bundles they name into the store; None: only models dropped into the store are used.",
    )
    download_max_bytes: int = Field(
        default=64 << 20,
        ge=1024,
        description="A bundle larger than this is refused (cut off while streaming).",
    )
    download_timeout_s: float = Field(default=30.0, gt=0, le=600, description="Per connect and per read.")
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
    tls: TlsConfig | None = None
    credentials_file: Path | None = Field(
        default=None, description="A file 'username:password' (e.g. a systemd credential)."
    )
    will_delay_s: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="MQTT 5 Will Delay: a reconnect within this long sends no 'offline' (anti-flapping).",
    )
    username_env: str = "ROBOTPM_MQTT_USERNAME"
    password_env: str = "ROBOTPM_MQTT_PASSWORD"


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


class AgentConfig(_Section):
    """The `[agent]` table."""

    robot_id: str
    site: str = "default"
    state_dir: Path
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    heartbeat_interval_s: float = Field(default=30.0, gt=0)
    streams: tuple[StreamConfig, ...] = Field(min_length=1)
    model: ModelConfig
    mqtt: MqttConfig = MqttConfig()
    ingest: IngestConfig = IngestConfig()
    policy: PolicyConfig = PolicyConfig()
    outbox: OutboxConfig = OutboxConfig()

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


def load_document(
    path: Path, profile: str | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Read the TOML file, apply the profile and environment overrides; return plain data."""
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "(file)", "no such file") from None
    except OSError as exc:
        raise ConfigError(str(path), "(file)", f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "(file)", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "(syntax)", str(exc)) from None
    profiles = raw.pop("profiles", {})
    meta = raw.pop("robotpm", {})
    chosen = profile or environ.get(PROFILE_ENV) or meta.get("profile")
    document: dict[str, Any] = copy.deepcopy(raw)
    if chosen:
        if not isinstance(profiles, dict) or chosen not in profiles:
            available = sorted(profiles) if isinstance(profiles, dict) else []
            raise ConfigError(str(path), "robotpm.profile", f"unknown profile {chosen!r}; have {available}")
        _merge(document, profiles[chosen])
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
            if keys:
                _set_path(document, keys, _env_value(value))
    document["_meta"] = {"path": str(path), "profile": chosen or ""}
    return document


def load_section(
    path: Path,
    section: str,
    model: type[ModelT],
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ModelT:
    """Load and validate one top-level table of the config file as `model`."""
    document = load_document(path, profile, environ)
    return validate_section(document, section, model)


def validate_section(document: dict[str, Any], section: str, model: type[ModelT]) -> ModelT:
    """Validate one table of an already loaded document; raises `ConfigError`."""
    path = document.get("_meta", {}).get("path", "config")
    data = document.get(section)
    if data is None:
        raise ConfigError(path, section, "missing table")
    base = Path(path).resolve().parent
    try:
        return model.model_validate(_resolve_paths(data, base), context={"base": base})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join([section, *(str(p) for p in first["loc"])])
        message = first["msg"]
        if first["type"] not in ("missing", "extra_forbidden") and "input" in first:
            message += f" (got {first['input']!r})"
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise ConfigError(path, key, message) from None


def load_agent_config(
    path: Path, profile: str | None = None, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Load the ``[agent]`` table of a config file."""
    return load_section(path, "agent", AgentConfig, profile, environ)


_PATH_KEYS = frozenset(
    {
        "directory",
        "bundled",
        "state_dir",
        "trusted_keys",
        "ca_file",
        "cert_file",
        "key_file",
        "credentials_file",
        "registry",
        "incoming",
        "reports_dir",
        "work_dir",
    }
)


def _resolve_paths(data: Any, base: Path) -> Any:
    """Make relative path values (by key name) absolute against the config file's directory."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key in _PATH_KEYS and isinstance(value, str) and value and not Path(value).is_absolute():
                out[key] = str((base / value).resolve())
            else:
                out[key] = _resolve_paths(value, base)
        return out
    if isinstance(data, list):
        return [_resolve_paths(v, base) for v in data]
    return data


def _merge(into: dict[str, Any], overlay: Mapping[str, Any]) -> None:
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _set_path(document: dict[str, Any], keys: list[str], value: Any) -> None:
    node = document
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
