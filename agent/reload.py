"""SIGHUP: reload the config file, apply what can change live, name what needs a restart.

``systemctl reload robotpm-agent`` (``ExecReload=``) and logrotate scripts send
SIGHUP. The signal handler only asks (`agent.daemon.AgentDaemon.request_reload`);
the daemon's loop then reads the file again between ticks:

* a file that does not load (syntax, a bad value) changes nothing: the running
  config stays, and ``config_reload_refused`` says why, naming the key;
* otherwise every changed key is compared with `LIVE`: those are applied at once
  (the log level and format, the log file, the alert policy, the journal bounds,
  shelving limits, the metrics file, the heartbeat period, and the trusted keys
  when the model source can reload them), the others are listed in
  ``config_restart_needed`` and keep their running value until the next start.

`apply` does all of that for the daemon: it loads, compares, reloads the trusted
keys, reconfigures logging and hands the merged config to the daemon's parts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import structlog

from agent.config import AgentConfig
from agent.contract.errors import ConfigError
from agent.logfile import configure_agent_logging

log = structlog.get_logger("robotpm.agent")

LIVE: Final = (
    "log_level",
    "log_format",
    "heartbeat_interval_s",
    "logging.",
    "policy.",
    "journal.",
    "shelving.",
    "metrics.",
    "model.trusted_keys",
)
"""Dotted keys (or prefixes ending in a dot) a reload applies without a restart."""

_LIVE_SECTIONS: Final = ("log_level", "log_format", "heartbeat_interval_s", "logging", "policy", "journal")
_LIVE_SECTIONS_MORE: Final = ("shelving", "metrics")


def changed_keys(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Dotted keys whose value differs between two configs, sorted."""
    return sorted(_diff(old.model_dump(mode="json"), new.model_dump(mode="json"), ""))


def is_live(key: str, *, trusted_keys_live: bool = True) -> bool:
    """Whether a reload applies this dotted key without a restart."""
    if key == "model.trusted_keys":
        return trusted_keys_live
    return any(key == live or (live.endswith(".") and key.startswith(live)) for live in LIVE)


def merged(old: AgentConfig, new: AgentConfig, *, trusted_keys_live: bool = True) -> AgentConfig:
    """`old` with the live parts of `new`: what the agent runs with after the reload."""
    update: dict[str, Any] = {name: getattr(new, name) for name in (*_LIVE_SECTIONS, *_LIVE_SECTIONS_MORE)}
    if trusted_keys_live:
        update["model"] = old.model.model_copy(update={"trusted_keys": new.model.trusted_keys})
    return old.model_copy(update=update)


def apply(
    running: AgentConfig,
    load: Callable[[], AgentConfig] | None,
    model_source: object,
    use: Callable[[AgentConfig], None],
) -> None:
    """Reload the config file with `load` and hand the running config's live update to `use`.

    Nothing changes when there is no file to load or it does not load (both logged as
    ``config_reload_refused``). The trusted keys reload live when `model_source` has a
    slot that can reload them.
    """
    if load is None:
        log.warning("config_reload_refused", reason="this agent was started without a config file")
        return
    try:
        new = load()
    except ConfigError as exc:
        log.error("config_reload_refused", reason=str(exc), key=exc.key, kept="the running config")
        return
    reload_keys = getattr(getattr(model_source, "slot", None), "reload_trusted_keys", None)
    keys_live = callable(reload_keys)
    changed = changed_keys(running, new)
    live = [k for k in changed if is_live(k, trusted_keys_live=keys_live)]
    later = [k for k in changed if k not in live]
    if "model.trusted_keys" in live and callable(reload_keys):
        try:
            reload_keys(new.model)
        except ConfigError as exc:
            log.error("config_reload_refused", reason=str(exc), key=exc.key, kept="the running config")
            return
    config = merged(running, new, trusted_keys_live=keys_live)
    configure_agent_logging(config)
    use(config)
    log.info("config_reloaded", changed=live)
    if later:
        log.warning(
            "config_restart_needed", keys=later, detail="kept at their running values until a restart"
        )


def _diff(old: Any, new: Any, prefix: str) -> Iterable[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new)):
            yield from _diff(old.get(key), new.get(key), f"{prefix}{key}.")
    elif old != new:
        yield prefix.rstrip(".")
