"""Trainer benchmark: 1M rows of simulated robot logs → evaluated, parity-checked model and report.

Simulates a fleet (not timed against the target), then runs the whole batch pipeline
(`trainer.tasks.failure.train_failure_classifier`, report included) and prints the time of
each stage next to the target of docs/design.md (1M rows → evaluated model and report
≤ 120 s on 2 cores). The baseline, measured in the same run on the same files, is a
naive extraction: Python's csv module and float() per field, which is what a quick
script would do; the ratio shows what reading with the agent's vectorised parser buys.

Nothing is asserted on timing; the script exits non-zero if the pipeline fails.

A second section times IsolationForest scoring at batch 4096: scikit-learn (the
baseline), skl2onnx's default graph and the compact single-TreeEnsemble graph.

Usage: .venv/bin/python bench/bench_trainer.py [--rows 1000000] [--robots 10] [--repeat 1] [--keep DIR]
                                               [--only-isoforest]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robotpm_sim.fleet import simulate_fleet
from trainer.config import TrainerConfig
from trainer.stages.extraction import DataExtractionAnalysis
from trainer.tasks.failure import train_failure_classifier

TARGET_S = 120.0


def naive_extract(root: Path, columns: list[str]) -> int:
    """The baseline: csv.DictReader and float() per field, for every log and its truth file."""
    rows = 0
    for path in sorted(root.glob("*/arm1.csv")):
        with path.open(newline="") as handle:
            for record in csv.DictReader(handle):
                _ = [float(record[c]) for c in columns]
                rows += 1
        with (path.parent / "truth.csv").open(newline="") as handle:
            for record in csv.DictReader(handle):
                _ = (
                    float(record["ts"]),
                    record["mode"],
                    float(record["health"]),
                    float(record["rul_s"] or "inf"),
                )
    return rows


def bench_isolation_forest(repeat: int = 7, batch: int = 4096) -> None:
    """IsolationForest scoring at batch 4096: scikit-learn vs skl2onnx's graph vs the compact graph."""
    import numpy as np
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import IsolationForest

    from trainer.stages.compact_isoforest import isolation_forest_onnx

    rng = np.random.default_rng(7)
    train = rng.normal(size=(20_000, 76)).astype(np.float32)
    batch_x = rng.normal(size=(batch, 76)).astype(np.float32)
    forest = IsolationForest(n_estimators=100, random_state=7).fit(train)
    default = convert_sklearn(
        forest,
        initial_types=[("features", FloatTensorType([None, 76]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    ).SerializeToString()
    compact = isolation_forest_onnx(forest, 76)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1

    def timed(call: object, n: int) -> float:
        runs = []
        for _ in range(n):
            t0 = time.perf_counter()
            call()  # type: ignore[operator]
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    load_default = timed(lambda: ort.InferenceSession(default, options), 3)
    load_compact = timed(lambda: ort.InferenceSession(compact, options), 3)
    s_default = ort.InferenceSession(default, options)
    s_compact = ort.InferenceSession(compact, options)
    sk = timed(lambda: forest.score_samples(batch_x), repeat)
    d = timed(lambda: s_default.run(None, {"features": batch_x}), repeat)
    c = timed(lambda: s_compact.run(["scores"], {"features": batch_x}), repeat)
    parity = float(
        np.abs(
            s_compact.run(["scores"], {"features": batch_x})[0][:, 0] + forest.score_samples(batch_x)
        ).max()
    )
    print()
    print(
        f"IsolationForest, 100 trees, 76 features, batch {batch} (median of {repeat}; onnxruntime 1 thread):"
    )
    rows = [
        ("scikit-learn score_samples", sk, ""),
        ("skl2onnx default graph", d, f"load {load_default * 1e3:6.1f} ms"),
        ("compact TreeEnsemble graph", c, f"load {load_compact * 1e3:6.1f} ms"),
    ]
    for label, seconds, extra in rows:
        print(f"  {label:<28} {seconds * 1e3:8.1f} ms   {seconds / sk:.2f}×   {extra}")
    sizes = f"{len(default):,} / {len(compact):,} B"
    print(f"  compact parity max |onnx + score_samples| = {parity:.1e}; graph sizes {sizes}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--robots", type=int, default=10)
    parser.add_argument("--rate-hz", type=float, default=50.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="keep data and models here")
    parser.add_argument("--only-isoforest", action="store_true", help="run only the IsolationForest section")
    args = parser.parse_args()
    if args.only_isoforest:
        bench_isolation_forest()
        return 0
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    work.mkdir(parents=True, exist_ok=True)
    config = TrainerConfig()
    seconds = args.rows / args.robots / args.rate_hz
    n_test = max(1, args.robots // 5)
    started = time.perf_counter()
    common = {"seconds": seconds, "rate_hz": args.rate_hz, "fault_duration_s": 600.0, "mean_healthy_s": 900.0}
    simulate_fleet(work / "train", robots=args.robots - n_test, seed=7, **common)
    simulate_fleet(work / "test", robots=n_test, seed=8, **common)
    simulate_s = time.perf_counter() - started
    schema = config.record_schema()

    totals: list[float] = []
    stage_runs: dict[str, list[float]] = {}
    baseline: list[float] = []
    ours: list[float] = []
    result = None
    for k in range(args.repeat):
        t0 = time.perf_counter()
        naive_extract(work / "train", list(schema.channels))
        naive_extract(work / "test", list(schema.channels))
        baseline.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        DataExtractionAnalysis(schema).extract(work / "train")
        DataExtractionAnalysis(schema).extract(work / "test")
        ours.append(time.perf_counter() - t0)
        shutil.rmtree(work / "models", ignore_errors=True)
        t0 = time.perf_counter()
        result = train_failure_classifier(
            config,
            work / "train",
            work / "test",
            registry_root=work / "models",
            name=f"bench{k}",
            report=True,
        )
        totals.append(time.perf_counter() - t0)
        for stage, seconds_taken in result.timings.items():
            stage_runs.setdefault(stage, []).append(seconds_taken)
    assert result is not None
    rows = sum(result.profile["train"]["robots"].values()) + sum(result.profile["test"]["robots"].values())
    print(
        f"data: {rows:,} rows ({args.robots} robots at {args.rate_hz:g} Hz), simulated in {simulate_s:.1f} s"
    )
    print(
        f"model: {result.manifest.label}, {result.manifest.length:,} bytes, written to {result.version_dir}"
    )
    print(
        f"parity max |onnx - sklearn| {result.exported.max_abs_diff:.2e}; test windows {len(result.test):,}"
    )
    print()
    print(f"{'stage':<12} {'median s':>9} {'share':>7}")
    total = statistics.median(totals)
    for stage, values in stage_runs.items():
        median = statistics.median(values)
        print(f"{stage:<12} {median:>9.2f} {median / total:>7.0%}")
    verdict = "met" if total <= TARGET_S else "NOT met"
    print(f"{'total':<12} {total:>9.2f}   target ≤ {TARGET_S:.0f} s: {verdict}")
    print()
    b, o = statistics.median(baseline), statistics.median(ours)
    print("extraction of the same files, logs and truth (median of runs):")
    print(f"  baseline csv.DictReader + float(): {b:7.2f} s  {rows / b:>10,.0f} rows/s")
    speed = f"{rows / o:>10,.0f} rows/s  ({b / o:.1f}× faster)"
    print(f"  ours (RecordParser, quarantine, hash): {o:7.2f} s  {speed}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    bench_isolation_forest()
    return 0


if __name__ == "__main__":
    sys.exit(main())
