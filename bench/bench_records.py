"""Record parsing: today's RecordParser against the one before it, on plain lines, in the same run.

The baseline is ``agent/contract/records.py`` as committed at ``--baseline`` (default: main),
loaded from git as a module of its own, so both parsers read the same bytes in one process.
Workload: the simulator's shape, a timestamp and 20 numeric columns (19 mapped channels and
one unmapped), in 1 MiB blocks as the follower hands them over, judged against the stream's
time (the baseline: last timestamp and tolerance; today: the stream's clock). Rows:

* plain lines: the vectorised path of both (the figure that must not regress);
* plain lines plus an unmapped text column: the baseline falls back to line-by-line, today's
  stays vectorised;
* a cobot export (quoted ISO times, booleans): today's line path only (the baseline refuses
  every row), for scale.

Prints medians of ``--repeats`` runs of each, alternated (wall time of parsing every block), and
the ratio.
Nothing asserts on timing. Usage: .venv/bin/python bench/bench_records.py [--lines N] [--repeats R]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from agent.contract import records as today  # noqa: E402
from agent.contract.timerule import StreamClock, TimeRule  # noqa: E402

BLOCK = 1 << 20
CHANNELS = {f"C{i}": f"c{i}" for i in range(19)}


def baseline_module(ref: str) -> ModuleType:
    """``agent/contract/records.py`` at git `ref`, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{ref}:agent/contract/records.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spec = importlib.util.spec_from_loader("records_baseline", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["records_baseline"] = module
    exec(compile(source, f"{ref}:agent/contract/records.py", "exec"), module.__dict__)
    return module


def plain_log(n: int, text_column: bool) -> tuple[str, bytes]:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(n, 20)).round(4)
    ts = 1_767_225_600.0 + np.arange(n) * 0.02
    last = "program" if text_column else "EXTRA"
    header = ",".join(["ts", *CHANNELS, last])
    rows = []
    for t, row in zip(ts.tolist(), values.tolist(), strict=True):
        cells = [repr(t), *(repr(v) for v in row[:19]), "pick_place" if text_column else repr(row[19])]
        rows.append(",".join(cells))
    return header, ("\n".join(rows) + "\n").encode()


def cobot_log(n: int) -> tuple[str, bytes]:
    header = ",".join(['"ts"', *(f'"{c}"' for c in CHANNELS), '"grip"'])
    rows = []
    for i in range(n):
        seconds = i % 60
        minutes = (i // 60) % 60
        hours = i // 3600
        iso = f'"2022-03-01T{hours % 24:02d}:{minutes:02d}:{seconds:02d}.000Z"'
        rows.append(",".join([iso, *(f'"{0.1 * k:.2f}"' for k in range(19)), "True" if i % 7 else "False"]))
    return header, ("\n".join(rows) + "\n").encode()


def blocks(data: bytes) -> list[tuple[int, bytes]]:
    out, position = [], 0
    while position < len(data):
        end = data.rfind(b"\n", position, position + BLOCK) + 1
        if end <= position:
            end = data.find(b"\n", position) + 1
        out.append((position, data[position:end]))
        position = end
    return out


def run_baseline(module: ModuleType, header: str, data: bytes, channels: dict[str, str]) -> Callable[[], int]:
    parser = module.RecordParser(module.RecordSchema(format="csv", timestamp_field="ts", channels=channels))
    parser.set_header(header)
    pieces = blocks(data)

    def go() -> int:
        last: float | None = None
        good = 0
        for offset, block in pieces:
            result = parser.parse(block, offset, last, 1.0)
            if len(result.batch):
                good += len(result.batch)
                newest = float(result.batch.timestamps.max())
                last = newest if last is None else max(last, newest)
        return good

    return go


def run_today(header: str, data: bytes, channels: dict[str, str]) -> Callable[[], int]:
    parser = today.RecordParser(today.RecordSchema(format="csv", timestamp_field="ts", channels=channels))
    parser.set_header(header)
    pieces = blocks(data)

    def go() -> int:
        clock = StreamClock(TimeRule(backwards_tolerance_s=1.0))
        return sum(len(parser.parse(block, offset, clock=clock).batch) for offset, block in pieces)

    return go


def timed(fn: Callable[[], int], repeats: int) -> tuple[float, int]:
    fn()  # warm
    times, good = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        good = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), good


def paired(
    base: Callable[[], int], new: Callable[[], int], repeats: int
) -> tuple[tuple[float, int], tuple[float, int]]:
    """Medians of `base` and `new`, run alternately so that a change of load hits both alike."""
    base(), new()  # warm
    base_s: list[float] = []
    new_s: list[float] = []
    base_ok = new_ok = 0
    for _ in range(repeats):
        for fn, out in ((base, base_s), (new, new_s)):
            started = time.perf_counter()
            ok = fn()
            out.append(time.perf_counter() - started)
            if fn is base:
                base_ok = ok
            else:
                new_ok = ok
    return (statistics.median(base_s), base_ok), (statistics.median(new_s), new_ok)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", default="main", help="git ref of the baseline records.py")
    args = ap.parse_args()
    old = baseline_module(args.baseline)
    rows: list[tuple[str, Any, Any, int]] = []
    for name, text_column in (("plain lines", False), ("plain lines + text column", True)):
        header, data = plain_log(args.lines, text_column)
        base, new = paired(
            run_baseline(old, header, data, CHANNELS), run_today(header, data, CHANNELS), args.repeats
        )
        rows.append((name, base, new, args.lines))
    header, data = cobot_log(args.lines // 4)
    cobot = timed(run_today(header, data, {**CHANNELS, "grip": "grip"}), args.repeats)
    print(
        f"RecordParser, {args.repeats} repeats, medians; baseline = {args.baseline}:agent/contract/records.py"
    )
    print(f"{'workload':34} {'lines':>8} {'baseline s':>11} {'ok':>8} {'today s':>9} {'ok':>8} {'ratio':>6}")
    for name, (base_s, base_ok), (new_s, new_ok), n in rows:
        print(f"{name:34} {n:8d} {base_s:11.4f} {base_ok:8d} {new_s:9.4f} {new_ok:8d} {new_s / base_s:6.2f}")
        print(f"{'  lines/s':34} {'':8} {n / base_s:11.3g} {'':8} {n / new_s:9.3g}")
    n = args.lines // 4
    print(
        f"{'cobot export (quoted, booleans)':34} {n:8d} {'(refuses the header)':>20} "
        f"{cobot[0]:9.4f} {cobot[1]:8d}"
    )
    print(f"{'  lines/s':34} {'':8} {'':11} {'':8} {n / cobot[0]:9.3g}")
    print("ratio: today's time / the baseline's (below 1: today is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
