"""Record and truth lines as text: byte for byte what a controller's ``printf`` would write."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from robotpm_sim.faults import COMPONENTS, MODES, GroundTruth
from robotpm_sim.records import COLUMNS, FloatArray, OutputFormat

_DECIMALS = (3, 0, *[3] * 6, *[2] * 6, *[2] * 6, 3)
_CSV_PREFIXES = ("", *[","] * (len(COLUMNS) - 1))
_JSON_PREFIXES = ('{"ts":', *(f',"{name}":' for name in COLUMNS[1:]))


def format_records(values: FloatArray, fmt: OutputFormat = "csv") -> bytes:
    """Record lines for ``values`` (rows in `COLUMNS` order), as the controller writes them.

    Byte for byte what ``"%.3f,%d,…" % row`` gives for values already rounded to their
    decimals (as the simulator's are), built with numpy instead of one format call per number.
    """
    if not len(values):
        return b""
    if fmt == "csv":
        return _format_fixed(values, _DECIMALS, _CSV_PREFIXES, "\n")
    return _format_fixed(values, _DECIMALS, _JSON_PREFIXES, "}\n")


def _format_fixed(values: FloatArray, decimals: Sequence[int], prefixes: Sequence[str], suffix: str) -> bytes:
    """Fixed-point text of every cell, each after its constant prefix; lines end with ``suffix``."""
    table = _TextTable(len(values))
    for column, (places, prefix) in enumerate(zip(decimals, prefixes, strict=True)):
        table.constant(prefix)
        table.number(values[:, column], places)
    table.constant(suffix)
    return table.tobytes()


class _TextTable:
    """Builds many text lines at once: one byte per line and position, plus whether it shows.

    Positions are filled one at a time (a contiguous row each, in a position-major buffer),
    then the buffer is turned line-major and the shown bytes are picked out. Numbers are
    right-aligned in a fixed width with their leading zeros and plus signs hidden, so the
    result reads like ``"%.{places}f" % x`` for already-rounded values.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._chars: list[npt.NDArray[np.uint8] | int] = []
        self._shown: list[npt.NDArray[np.bool_] | bool] = []

    def constant(self, text: str) -> None:
        """The same text on every line."""
        for byte in text.encode():
            self._chars.append(byte)
            self._shown.append(True)

    def choice(self, codes: npt.NDArray[np.integer], options: Sequence[str]) -> None:
        """``options[code]`` on each line."""
        encoded = [o.encode() for o in options]
        width = max(len(e) for e in encoded)
        padded = np.zeros((len(encoded), width), dtype=np.uint8)
        for i, e in enumerate(encoded):
            padded[i, : len(e)] = np.frombuffer(e, dtype=np.uint8)
        lengths = np.array([len(e) for e in encoded])[codes]
        for position in range(width):
            self._chars.append(padded[codes, position])
            self._shown.append(lengths > position)

    def number(self, x: FloatArray, places: int, blank: npt.NDArray[np.bool_] | None = None) -> None:
        """``x`` with ``places`` decimals; nothing where ``blank`` is set."""
        if blank is not None:
            x = np.where(blank, 0.0, x)
        scaled = np.rint(np.abs(x) * 10.0**places)  # integers, exact in float64 below 2**53
        negative = (x < 0) & (scaled > 0)
        whole_digits = max(1, len(str(int(scaled.max()) // 10**places))) if len(x) else 1
        visible = None if blank is None else ~blank
        self._chars.append(45)
        self._shown.append(negative if visible is None else negative & visible)
        for position in range(whole_digits + places):
            if position == whole_digits:
                self._chars.append(46)
                self._shown.append(True if visible is None else visible)
            power = 10.0 ** (whole_digits + places - 1 - position)
            quotient = np.floor(scaled / power)
            self._chars.append((quotient - 10.0 * np.floor(quotient / 10.0) + 48.0).astype(np.uint8))
            if position < whole_digits - 1:  # a leading digit shows only if significant
                significant = quotient > 0
                self._shown.append(significant if visible is None else significant & visible)
            else:
                self._shown.append(True if visible is None else visible)

    def tobytes(self) -> bytes:
        """All lines, joined."""
        width = len(self._chars)
        chars = np.empty((width, self.n), dtype=np.uint8)
        shown = np.empty((width, self.n), dtype=np.bool_)
        for row, (c, m) in enumerate(zip(self._chars, self._shown, strict=True)):
            chars[row] = c
            shown[row] = m
        picked: npt.NDArray[np.uint8] = np.ascontiguousarray(chars.T)[np.ascontiguousarray(shown.T)]
        return picked.tobytes()


def format_truth(truth: GroundTruth) -> bytes:
    """Lines of truth.csv (without header) for ``truth``."""
    if not len(truth):
        return b""
    table = _TextTable(len(truth))
    table.number(truth.timestamps, 3)
    table.constant(f",{truth.robot_id},")
    table.choice(truth.mode, [f"{m},{COMPONENTS[m]}," for m in MODES])
    table.number(truth.health, 4)
    table.constant(",")
    table.number(truth.failure.astype(np.float64), 0)
    table.constant(",")
    table.number(truth.rul_s, 3, blank=np.isnan(truth.rul_s))
    table.constant("\n")
    return table.tobytes()
