"""The record a simulated arm controller writes: its columns, in file order, and its header.

Per joint the motor current (A), winding temperature (°C) and speed (deg/s); plus the gripper's
current and the controller's lifetime cycle counter. ``COLUMNS`` is the contract with
``[[agent.streams]]`` in config.toml.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

OutputFormat = Literal["csv", "jsonl"]

N_JOINTS = 6
COLUMNS: tuple[str, ...] = (
    "ts",
    "CYCLE",
    *(f"A{j}_I" for j in range(1, 7)),
    *(f"A{j}_T" for j in range(1, 7)),
    *(f"A{j}_V" for j in range(1, 7)),
    "TOOL_I",
)
"""Column names of a record, in file order."""

CURRENT = slice(2, 8)
TEMPERATURE = slice(8, 14)
SPEED = slice(14, 20)
TOOL = 20


def header_line(fmt: OutputFormat = "csv") -> bytes:
    """The header line a CSV log starts with (JSON lines have none)."""
    return (",".join(COLUMNS) + "\n").encode() if fmt == "csv" else b""
