"""The config file both halves read: one TOML file with profiles and environment overrides.

Resolution order, later wins:

1. the file's top-level tables (``[agent]``, ``[trainer]``);
2. the selected profile's tables (``[profiles.<name>.agent]`` …), merged key by key;
   the profile is ``--profile``, else ``$ROBOTPM_PROFILE``, else ``robotpm.profile``
   in the file, else none;
3. environment variables ``ROBOTPM__<SECTION>__<KEY>…`` (double underscores separate
   levels; values are read as TOML literals when they parse, else as strings), e.g.
   ``ROBOTPM__AGENT__MQTT__PORT=1884``.

Relative paths (under the keys each side names) are resolved against the directory of
the config file. Any problem raises `ConfigError` naming the file, the dotted key and
the problem; the CLIs turn it into exit code 2.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.contract.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "ROBOTPM__"
PROFILE_ENV = "ROBOTPM_PROFILE"

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigSection(BaseModel):
    """The base of every config table: frozen once loaded, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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
    path_keys: frozenset[str] = frozenset(),
) -> ModelT:
    """Load and validate one top-level table of the config file as `model`."""
    document = load_document(path, profile, environ)
    return validate_section(document, section, model, path_keys)


def validate_section(
    document: dict[str, Any], section: str, model: type[ModelT], path_keys: frozenset[str] = frozenset()
) -> ModelT:
    """Validate one table of a loaded document, resolving `path_keys` values; raises `ConfigError`."""
    path = document.get("_meta", {}).get("path", "config")
    data = document.get(section)
    if data is None:
        raise ConfigError(path, section, "missing table")
    base = Path(path).resolve().parent
    try:
        return model.model_validate(_resolve_paths(data, base, path_keys), context={"base": base})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join([section, *(str(p) for p in first["loc"])])
        message = first["msg"]
        if first["type"] not in ("missing", "extra_forbidden") and "input" in first:
            message += f" (got {first['input']!r})"
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise ConfigError(path, key, message) from None


def _resolve_paths(data: Any, base: Path, path_keys: frozenset[str]) -> Any:
    """Make relative path values (by key name) absolute against the config file's directory."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key in path_keys and isinstance(value, str) and value and not Path(value).is_absolute():
                out[key] = str((base / value).resolve())
            else:
                out[key] = _resolve_paths(value, base, path_keys)
        return out
    if isinstance(data, list):
        return [_resolve_paths(v, base, path_keys) for v in data]
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
