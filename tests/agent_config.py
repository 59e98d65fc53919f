"""One builder for the config.toml of an agent that tests and benchmarks run as a subprocess.

Each caller passes only what its scenario needs (a port, a watch mode, a policy);
everything else takes the values a test agent usually wants: JSON logs, state,
store and bundled model in directories beside the config, one CSV stream "arm1"
with the tiny test model's two channels (see `tests.models`). `tiny_agent` is the
same agent as an `AgentConfig`, for tests that run the daemon or a replay in-process.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, ModelConfig
from agent.contract.streams import StreamConfig

TOML_VALUE = str | int | float | bool | Path | Sequence[str]

TEST_CHANNELS = {"J1": "j1_current", "T1": "j1_temp"}
"""The tiny test model's channels, as the test logs name them (header ``ts,J1,T1``)."""


def stream(
    name: str = "arm1",
    directory: str | Path = "logs",
    *,
    patterns: Sequence[str] | None = None,
    channels: Mapping[str, str] = TEST_CHANNELS,
    timestamp_field: str = "ts",
) -> dict[str, object]:
    """One ``[[agent.streams]]`` table."""
    table: dict[str, object] = {"name": name, "directory": directory, "timestamp_field": timestamp_field}
    if patterns is not None:
        table["patterns"] = list(patterns)
    table["channels"] = dict(channels)
    return table


def agent_config(
    *,
    port: int,
    robot_id: str = "test-robot",
    site: str = "test",
    heartbeat_interval_s: float = 30.0,
    streams: Sequence[Mapping[str, object]] = (),
    agent: Mapping[str, TOML_VALUE] | None = None,
    model: Mapping[str, TOML_VALUE] | None = None,
    mqtt: Mapping[str, TOML_VALUE] | None = None,
    ingest: Mapping[str, TOML_VALUE] | None = None,
    policy: Mapping[str, TOML_VALUE] | None = None,
) -> str:
    """The text of an agent config.toml; the keyword tables override or add keys of each section."""
    sections: list[tuple[str, Mapping[str, object]]] = [
        (
            "[agent]",
            {
                "robot_id": robot_id,
                "site": site,
                "state_dir": "state",
                "heartbeat_interval_s": heartbeat_interval_s,
                "log_format": "json",
                **(agent or {}),
            },
        ),
        ("[agent.model]", {"directory": "store", "bundled": "bundled", **(model or {})}),
        ("[agent.mqtt]", {"host": "127.0.0.1", "port": port, **(mqtt or {})}),
        ("[agent.ingest]", dict(ingest or {})),
        ("[agent.policy]", dict(policy or {})),
    ]
    lines: list[str] = []
    for header, values in sections:
        if values:
            lines.append(header)
            lines.extend(f"{key} = {_value(value)}" for key, value in values.items())
    for table in streams or (stream(),):
        lines.append("[[agent.streams]]")
        channels = table.get("channels", {})
        lines.extend(f"{key} = {_value(value)}" for key, value in table.items() if key != "channels")
        lines.append("[agent.streams.channels]")
        assert isinstance(channels, Mapping)
        lines.extend(f"{_value(column)} = {_value(channel)}" for column, channel in channels.items())
    return "\n".join(lines) + "\n"


def _value(value: object) -> str:
    """A TOML value: strings and paths quoted (JSON escapes are valid TOML), lists of strings, numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def tiny_agent(root: Path, *, stream_options: Mapping[str, Any] | None = None, **fields: Any) -> AgentConfig:
    """The tiny test model's agent under `root`: stream "arm1" (``ts,J1,T1``) in ``root/logs``.

    State, store and bundled model directories are beside it (the caller writes the model);
    `stream_options` are extra stream fields, `fields` replace `AgentConfig` fields.
    """
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    arm = StreamConfig(
        name="arm1", directory=logs, timestamp_field="ts", channels=TEST_CHANNELS, **(stream_options or {})
    )
    settings: dict[str, Any] = {
        "robot_id": "r1",
        "state_dir": root / "state",
        "streams": (arm,),
        "model": ModelConfig(directory=root / "store", bundled=root / "bundled"),
        **fields,
    }
    return AgentConfig(**settings)
