"""Agent benchmarks: memory, model swap, and our pipeline against a naive agent, each against a baseline.

Every figure is compared with a baseline measured in the same run (docs/design.md, "Figures to reach"):

a. Memory. RSS of a fresh agent-like process (imports ``agent.daemon``, starts an
   `AgentDaemon` with the bundled model, or with the benchmark's random forest when
   ``agent/models/bundled`` is absent, and catches up on a log), next to a bare interpreter
   and the imports alone. Then RSS after 1,000 model swaps (OnnxScorer load + golden
   test + ModelSlot.accept, which calls `release_freed_memory`) against RSS after the
   first swap, with `release_freed_memory` replaced by a no-op as the baseline.
b. Model swap, in a live daemon fed at 1 kHz by a writer thread: time from a verified
   model's directory being renamed into the store to the tick that scores with it,
   and how long the scoring loop stalls during the swap against the same loop
   without a swap.
c. Against a naive agent on the same simulated log: our parts (RecordParser →
   StreamingFeaturizer → OnnxScorer), our StreamPipeline (with the alert policy) and
   the whole daemon (follower, SQLite commits) against pandas ``read_csv`` per chunk,
   pandas features per window and scikit-learn ``predict_proba`` per window, each in
   its own subprocess (throughput and peak RSS); and onnxruntime against
   scikit-learn scoring one row.

The model is a 100-tree RandomForestClassifier over the canonical channels of
config.toml (feature spec window 64 / hop 32), exported with skl2onnx (zipmap=False,
float32 input), trained on simulated fleet history (robotpm_sim.fleet).

Nothing here asserts on timing. The script exits non-zero when a run fails
functionally: a worker crashes, our scores disagree with scikit-learn's, the daemon
misses lines, or a swap never happens.

Usage: .venv/bin/python bench/bench_agent.py [--quick] [--only a,b,c] [--keep DIR]
Needs the trainer extra (scikit-learn, skl2onnx) and pandas (the naive agent only).

Workers run as ``bench_agent.py --worker NAME ARGS_JSON``; the module imports only
the standard library at the top so that each worker's RSS counts what it imports.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WINDOW, HOP = 64, 32
STATISTICS: tuple[Any, ...] = ("mean", "std", "min", "max", "slope")  # agent.contract.features.Statistic
N_TREES = 100
RATE_HZ = 50.0
SEED = 11
LOG_NAME = "arm1.csv"
MIB = 1024 * 1024


class BenchFailure(Exception):
    """A run failed functionally (not a slow result: a wrong or missing one)."""


@dataclass(frozen=True)
class Plan:
    """How big each run is: the full figures, or a --quick pass (~1 minute on an idle 2-core machine)."""

    train_robots: int = 8
    train_seconds: float = 3600.0
    log_lines: int = 1_000_000
    memory_repeats: int = 3
    swaps: int = 1000
    swap_repeats: int = 3
    swaps_forest: bool = True  # also swap the benchmark forest when the agent runs agent/models/bundled
    live_swaps: tuple[tuple[float, int], ...] = ((0.05, 15), (1.0, 8))  # (check_interval_s, swaps)
    repeats: int = 5
    naive_repeats: int = 3
    naive_lines: int = 32_000
    one_row_calls: int = 200


QUICK = Plan(
    train_robots=3,
    train_seconds=900.0,
    log_lines=50_000,
    memory_repeats=1,
    swaps=100,
    swap_repeats=1,
    swaps_forest=False,
    live_swaps=((0.05, 3), (1.0, 2)),
    repeats=1,
    naive_repeats=1,
    naive_lines=3_200,
    one_row_calls=30,
)


# -- small helpers (standard library only) ----------------------------------------------------------


def proc_memory_mib() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident set of the calling process, in MiB."""
    out: dict[str, float] = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) / 1024
    return {"rss": out["VmRSS"], "peak": out["VmHWM"]}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "-"
    if abs(value) >= 1e5:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], note: str = "") -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    print(
        "  "
        + "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(cells[0], widths, strict=True))
        )
    )
    print("  " + "  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(
            "  "
            + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    if note:
        for line in note.splitlines():
            print(f"  {line}")


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def run_worker(work: Path, name: str, args: dict[str, Any], timeout_s: float = 900.0) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; its result is the JSON it writes to a file."""
    result = work / f"result-{name}-{time.monotonic_ns()}.json"
    log = work / f"worker-{name}.log"
    payload = json.dumps({**args, "result": str(result)})
    with log.open("ab") as out:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", name, payload],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    if proc.returncode != 0 or not result.exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise BenchFailure(f"worker {name} failed (exit {proc.returncode}); log {log}:\n{tail}")
    data: dict[str, Any] = json.loads(result.read_text())
    result.unlink()
    return data


def write_result(args: dict[str, Any], data: dict[str, Any]) -> None:
    Path(args["result"]).write_text(json.dumps(data))


# -- assets: the model, its sklearn twin, the log (built in the parent, which has sklearn) ----------


@dataclass(frozen=True)
class Assets:
    """What every section works on, built once per run."""

    work: Path
    model_dir: Path  # our random forest: model.onnx + manifest.json
    sk_model: Path  # the same forest, pickled, for the naive agent
    agent_model_dir: Path  # what the fresh agent loads: agent/models/bundled if present, else model_dir
    agent_model_label: str
    log_dir: Path
    n_lines: int
    file_columns: tuple[str, ...]  # file column names in canonical order
    model_bytes: int


def stream_channels() -> dict[str, str]:
    """The first stream's column → canonical channel mapping from config.toml."""
    from agent.config import load_agent_config

    config = load_agent_config(REPO / "config.toml", profile="dev", environ={})
    return dict(config.streams[0].channels)


def feature_spec() -> Any:
    from agent.contract.features import FeatureSpec

    return FeatureSpec(
        channels=tuple(stream_channels().values()), window=WINDOW, hop=HOP, statistics=STATISTICS
    )


def build_assets(work: Path, plan: Plan) -> Assets:
    """Train the benchmark's forest on simulated robots, export it, and write the benchmark log."""
    import pickle
    from datetime import datetime, timezone

    import numpy as np
    from onnxruntime import InferenceSession
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestClassifier

    from agent.contract import manifest as contract
    from agent.contract.features import batch_features
    from robotpm_sim.faults import MODES
    from robotpm_sim.fleet import simulate_history
    from robotpm_sim.formatting import format_records
    from robotpm_sim.records import COLUMNS, header_line

    channels = stream_channels()
    file_columns = tuple(channels)
    column_index = [COLUMNS.index(name) for name in file_columns]
    spec = feature_spec()

    # Training data: a few robots whose fast faults cover every mode.
    started = time.perf_counter()
    seconds = plan.train_seconds
    xs, ys = [], []
    for n in range(plan.train_robots):
        _, values, truth = simulate_history(
            f"train-{n}", seconds, RATE_HZ, SEED, fault_duration_s=240.0, mean_healthy_s=300.0
        )
        features, ends = batch_features(values[:, column_index], spec)
        xs.append(features)
        ys.append(truth.mode[ends - 1])
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys)
    forest = RandomForestClassifier(
        n_estimators=N_TREES, max_depth=12, min_samples_leaf=3, random_state=0, n_jobs=2
    ).fit(x, y)
    forest.n_jobs = None  # score as a naive agent would: one job
    onnx_model = convert_sklearn(
        forest,
        initial_types=[("features", FloatTensorType([None, spec.n_features]))],
        options={id(forest): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    model_dir = work / "model"
    model_dir.mkdir()
    (model_dir / "model.onnx").write_bytes(onnx_model.SerializeToString())
    sk_model = work / "forest.pkl"
    sk_model.write_bytes(pickle.dumps(forest))
    sha, length = contract.file_sha256(model_dir / "model.onnx")
    session = InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    golden_x = x[:3]
    golden_y = session.run(["probabilities"], {"features": golden_x})[0]
    classes = [int(c) for c in forest.classes_]
    heads = tuple(
        contract.AlertHead(
            output="probabilities",
            column=i,
            component=f"class{c}",
            failure_mode=MODES[c],
            meaning=f"probability of {MODES[c]}",
            thresholds=contract.Thresholds(warning=0.6, critical=0.85, clear=0.4),
        )
        for i, c in enumerate(classes)
        if c != 0
    )
    manifest = contract.ModelManifest(
        model_id="bench-forest",
        version=1,
        created=datetime(2026, 1, 1, tzinfo=timezone.utc),
        task="failure_classifier",
        feature_spec=spec,
        feature_spec_hash=spec.spec_hash(),
        feature_names=spec.feature_names(),
        onnx=contract.OnnxInterface(
            input_name="features",
            input_shape=(None, spec.n_features),
            outputs=("label", "probabilities"),
            opset=17,
        ),
        heads=heads,
        reference=contract.FeatureReference(
            mean=tuple(float(v) for v in x.mean(axis=0)), std=tuple(float(v) + 1e-9 for v in x.std(axis=0))
        ),
        golden=tuple(
            contract.GoldenVector(
                features=tuple(float(v) for v in gx), expected={"probabilities": tuple(map(float, gy))}
            )
            for gx, gy in zip(golden_x, golden_y, strict=True)
        ),
        sha256=sha,
        length=length,
    )
    (model_dir / "manifest.json").write_text(manifest.to_json())
    trained_s = time.perf_counter() - started

    # The benchmark log: one robot that was not in the training set, as the controller writes it.
    n_lines = plan.log_lines
    _, values, _ = simulate_history(
        "bench-robot", n_lines / RATE_HZ, RATE_HZ, SEED + 1, fault_duration_s=600.0
    )
    log_dir = work / "logs"
    log_dir.mkdir()
    with (log_dir / LOG_NAME).open("wb") as handle:
        handle.write(header_line())
        for lo in range(0, len(values), 200_000):
            handle.write(format_records(values[lo : lo + 200_000]))

    bundled = REPO / "agent" / "models" / "bundled"
    if (bundled / "manifest.json").exists() and (bundled / "model.onnx").exists():
        agent_model_dir = bundled
        label = f"agent/models/bundled ({contract.ModelManifest.read(bundled).label})"
    else:
        agent_model_dir = model_dir
        label = "benchmark forest (agent/models/bundled absent)"
    print(
        f"assets: forest of {N_TREES} trees on {len(x):,} windows × {spec.n_features} features, "
        f"{length / 1024:,.0f} KiB ONNX, built in {trained_s:.1f} s; log of {n_lines:,} lines "
        f"({(log_dir / LOG_NAME).stat().st_size / MIB:,.1f} MiB)"
    )
    return Assets(
        work=work,
        model_dir=model_dir,
        sk_model=sk_model,
        agent_model_dir=agent_model_dir,
        agent_model_label=label,
        log_dir=log_dir,
        n_lines=n_lines,
        file_columns=file_columns,
        model_bytes=length,
    )


def agent_config(
    root: Path,
    log_dir: Path,
    model_dir: Path,
    *,
    check_interval_s: float = 1.0,
    watch: str = "auto",
    read_chunk_bytes: int | None = None,
) -> Any:
    """An AgentConfig for one stream following `log_dir`, config.toml's channel mapping."""
    from agent.config import AgentConfig, IngestConfig, ModelConfig
    from agent.contract.streams import StreamConfig

    return AgentConfig(
        robot_id="bench-robot",
        site="bench",
        state_dir=root / "state",
        streams=(
            StreamConfig(name="arm1", directory=log_dir, timestamp_field="ts", channels=stream_channels()),
        ),
        # Probation off: the swap benchmarks time the swap itself. With probation (50 windows by
        # default) a model goes live after that many shadow-scored windows, at the log's pace.
        model=ModelConfig(
            directory=root / "store",
            bundled=model_dir,
            check_interval_s=check_interval_s,
            probation_windows=0,
        ),
        ingest=IngestConfig(
            watch=watch,  # type: ignore[arg-type]
            **({"read_chunk_bytes": read_chunk_bytes} if read_chunk_bytes else {}),
        ),
        heartbeat_interval_s=3600.0,
    )


# -- workers (each runs in its own interpreter) ----------------------------------------------------


class _Hide:
    """An import hook that makes packages look uninstalled, as on a robot with only the agent's deps."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in self.names:
            raise ImportError(f"{name} hidden by the benchmark")


def hide_packages(args: dict[str, Any]) -> None:
    if args.get("hide"):
        sys.meta_path.insert(0, _Hide(args["hide"]))


def worker_bare(args: dict[str, Any]) -> None:
    """A bare interpreter: the floor every Python process pays."""
    write_result(args, proc_memory_mib())


def worker_imports(args: dict[str, Any]) -> None:
    """The agent's imports alone."""
    hide_packages(args)
    import agent.daemon  # noqa: F401

    write_result(args, proc_memory_mib())


def worker_daemon(args: dict[str, Any]) -> None:
    """A fresh agent: start the daemon with the model, catch up on the log, report RSS and lines/s."""
    hide_packages(args)
    import threading

    from agent.daemon import AgentDaemon
    from agent.sdnotify import Notifier
    from agent.testing import InMemoryTransport

    root = Path(args["root"])
    config = agent_config(
        root, Path(args["log_dir"]), Path(args["model_dir"]), read_chunk_bytes=args.get("read_chunk_bytes")
    )
    daemon = AgentDaemon(config, transport=InMemoryTransport(), notifier=Notifier(None))
    daemon.startup()
    after_start = proc_memory_mib()
    started = time.perf_counter()
    while daemon.streams[0].counters.lines < args["n_lines"]:
        if time.perf_counter() - started > 600:
            break
        daemon.tick(0.0)
    elapsed = time.perf_counter() - started
    caught_up = proc_memory_mib()
    lines = daemon.streams[0].counters.lines
    windows = daemon.streams[0].counters.windows
    daemon.shutdown()
    write_result(
        args,
        {
            "after_start": after_start,
            "caught_up": caught_up,
            "lines": lines,
            "windows": windows,
            "seconds": elapsed,
            "threads": threading.active_count(),
        },
    )


def worker_swaps(args: dict[str, Any]) -> None:
    """Swap the model `n` times as the daemon does (load, golden test, accept); RSS along the way."""
    import numpy as np

    import agent.models.slot as model_slot
    from agent.config import ModelConfig
    from agent.models.scorer import OnnxScorer

    variant = args["variant"]
    if variant == "no-op":
        model_slot.release_freed_memory = lambda: None
    elif variant == "gc only":
        import gc

        model_slot.release_freed_memory = gc.collect  # type: ignore[assignment]
    elif variant == "malloc_trim only":
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        model_slot.release_freed_memory = lambda: libc.malloc_trim(0)
    model_dir = Path(args["model_dir"])
    slot = model_slot.ModelSlot(ModelConfig(directory=model_dir / "no-store", bundled=model_dir))
    first = slot.load_initial()
    batch = np.zeros((16, first.manifest.feature_spec.n_features))
    first.score(batch)
    before = proc_memory_mib()
    marks: dict[str, float] = {}
    load_ms: list[float] = []
    n = int(args["n"])
    for i in range(1, n + 1):
        t = time.perf_counter()
        scorer = OnnxScorer.load(model_dir)
        scorer.check_golden()
        load_ms.append((time.perf_counter() - t) * 1e3)
        slot.accept(scorer)
        scorer.score(batch)
        if i in (1, 10, 100, 300, 1000, n):
            marks[str(i)] = proc_memory_mib()["rss"]
    write_result(args, {"before": before["rss"], "marks": marks, "load_ms": load_ms})


def worker_swap_live(args: dict[str, Any]) -> None:
    """A live daemon fed at `rate` lines/s; new versions are renamed into the store; time the swaps."""
    import threading

    from agent.daemon import AgentDaemon
    from agent.sdnotify import Notifier
    from agent.testing import InMemoryTransport
    from robotpm_sim.fleet import simulate_history
    from robotpm_sim.formatting import format_records
    from robotpm_sim.records import header_line

    root = Path(args["root"])
    rate = float(args["rate"])
    repeats = int(args["repeats"])
    model_dir = Path(args["model_dir"])
    log_dir = root / "logs"
    log_dir.mkdir(parents=True)
    config = agent_config(root, log_dir, model_dir, check_interval_s=float(args["check_interval_s"]))
    per_swap_s = config.model.check_interval_s + 0.8
    total_s = repeats * per_swap_s + 2.0
    _, values, _ = simulate_history("live-robot", total_s + 5.0, rate, SEED + 2, faults=())
    text = format_records(values)
    import numpy as np

    line_ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == 10) + 1
    log_path = log_dir / LOG_NAME
    log_path.write_bytes(header_line())

    stop = threading.Event()
    written = [0]

    def writer() -> None:
        """Append the lines due so far every millisecond, as a controller logging at `rate` would."""
        with log_path.open("ab", buffering=0) as handle:
            begin = time.perf_counter()
            done = 0
            while not stop.is_set():
                due = min(int((time.perf_counter() - begin) * rate), len(line_ends))
                if due > done:
                    lo = line_ends[done - 1] if done else 0
                    handle.write(text[lo : line_ends[due - 1]])
                    done = due
                    written[0] = done
                time.sleep(0.001)

    # Stage versions 2.. outside the store: same forest, new version in the manifest.
    from agent.contract.manifest import ModelManifest

    manifest = ModelManifest.read(model_dir)
    staging = root / "staging"
    for v in range(2, repeats + 2):
        d = staging / f"v{v}"
        d.mkdir(parents=True)
        shutil.copy2(model_dir / "model.onnx", d / "model.onnx")
        (d / "manifest.json").write_text(manifest.model_copy(update={"version": v}).to_json())
    (root / "store").mkdir()

    import ctypes
    import gc

    import agent.models.slot as model_slot

    phases: list[tuple[str, float]] = []
    real_release = model_slot.release_freed_memory

    def timed_release() -> None:
        t = time.perf_counter()
        real_release()
        phases.append(("release", time.perf_counter() - t))

    model_slot.release_freed_memory = timed_release

    class TimedEvent(threading.Event):
        """The daemon's wake-up event, timing how long each tick waits for file activity."""

        waited = 0.0

        def wait(self, timeout: float | None = None) -> bool:
            t = time.perf_counter()
            try:
                return super().wait(timeout)
            finally:
                self.waited = time.perf_counter() - t

    daemon = AgentDaemon(config, transport=InMemoryTransport(), notifier=Notifier(None))
    wakeup = TimedEvent()
    daemon._wakeup = wakeup  # before startup, so the followers' watchers set this one
    daemon.startup()
    slot = daemon.slot
    real_poll, real_accept = slot.poll, slot.accept

    def timed_poll() -> Any:
        t = time.perf_counter()
        got = real_poll()
        phases.append(("poll_found" if got is not None else "poll_none", time.perf_counter() - t))
        return got

    def timed_accept(scorer: Any, **options: Any) -> None:
        t = time.perf_counter()
        real_accept(scorer, **options)
        phases.append(("accept", time.perf_counter() - t))

    slot.poll = timed_poll  # type: ignore[method-assign]
    slot.accept = timed_accept  # type: ignore[method-assign]

    ticks: list[tuple[float, float, int, int, float]] = []  # start, end, lines, version after, busy s
    appeared: dict[int, float] = {}
    last = repeats + 1
    thread = threading.Thread(target=writer, name="bench-writer")
    thread.start()
    try:
        begin = time.perf_counter()
        next_version, next_at, live_at = 2, begin + 1.0, 0.0
        poll_s = config.ingest.poll_interval_s
        while time.perf_counter() - begin < total_s + 30:
            if next_version <= last and time.perf_counter() >= next_at:
                os.rename(staging / f"v{next_version}", root / "store" / f"v{next_version}")
                appeared[next_version] = time.perf_counter()
                next_version += 1
                next_at = float("inf")  # the next one once this one is live
            start = time.perf_counter()
            lines = daemon.tick(poll_s)
            end = time.perf_counter()
            version = slot.current.manifest.version
            ticks.append((start, end, lines, version, end - start - wakeup.waited))
            if next_at == float("inf") and version == next_version - 1:
                live_at = end
                next_at = end + 0.4 + (version % 3) * 0.1  # steady state before the next swap
            if version == last and end > live_at + 0.5:
                break
    finally:
        stop.set()
        thread.join(5.0)
    # let the daemon read what is left, then check nothing was lost
    for _ in range(200):
        if daemon.streams[0].counters.lines >= written[0]:
            break
        daemon.tick(0.01)
    lines_read = daemon.streams[0].counters.lines
    daemon.shutdown()
    for _ in range(5):  # the two halves of release_freed_memory, alone, in this process's heap
        t = time.perf_counter()
        gc.collect()
        phases.append(("gc.collect", time.perf_counter() - t))
        t = time.perf_counter()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        phases.append(("malloc_trim", time.perf_counter() - t))
    write_result(
        args,
        {
            "ticks": ticks,
            "appeared": appeared,
            "phases": phases,
            "written": written[0],
            "lines_read": lines_read,
            "final_version": slot.current.manifest.version,
        },
    )


def _ours_parts(log: Path, scorer: Any, schema: Any) -> tuple[int, Any]:
    import numpy as np

    from agent.contract.features import StreamingFeaturizer
    from agent.contract.records import RecordParser

    parser = RecordParser(schema)
    featurizer = StreamingFeaturizer(scorer.manifest.feature_spec)
    probabilities: list[Any] = []
    lines = 0
    with log.open("rb") as handle:
        header = handle.readline()
        parser.set_header(header)
        offset = len(header)
        rest = b""
        last_ts: float | None = None
        while chunk := handle.read(1 << 20):
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            result = parser.parse(data[:cut], offset, last_ts, 1.0)
            offset += cut
            batch = result.batch
            if not len(batch):
                continue
            lines += len(batch)
            last_ts = float(batch.timestamps[-1])
            done = featurizer.push(batch.values)
            if len(done):
                probabilities.append(scorer.score(done.features)["probabilities"])
    return lines, np.concatenate(probabilities)


def worker_ours(args: dict[str, Any]) -> None:
    """Our parts on the log: RecordParser → StreamingFeaturizer → OnnxScorer, 1 MiB chunks."""
    import numpy as np

    from agent.contract.records import RecordSchema
    from agent.models.scorer import OnnxScorer

    scorer = OnnxScorer.load(Path(args["model_dir"]))
    schema = RecordSchema(format="csv", timestamp_field="ts", channels=stream_channels())
    started = time.perf_counter()
    lines, probabilities = _ours_parts(Path(args["log"]), scorer, schema)
    elapsed = time.perf_counter() - started
    if args.get("save"):
        np.save(args["save"], probabilities)
    write_result(
        args, {"lines": lines, "windows": len(probabilities), "seconds": elapsed, **proc_memory_mib()}
    )


def worker_pipeline(args: dict[str, Any]) -> None:
    """Our StreamPipeline (parser, featurizer, scorer and alert policy) fed 1 MiB blocks of the log."""
    from dataclasses import dataclass as dc

    from agent import __version__
    from agent.config import IngestConfig, PolicyConfig
    from agent.contract.streams import StreamConfig
    from agent.ingest import Quarantine
    from agent.models.scorer import OnnxScorer
    from agent.policy import AlertPolicy
    from agent.seams import SystemClock
    from agent.streams.pipeline import StreamPipeline

    @dc(frozen=True)
    class Block:
        file_key: str
        path: Path
        data: bytes
        offset: int
        header: bytes | None
        rejected: tuple[()] = ()

    log = Path(args["log"])
    scorer = OnnxScorer.load(Path(args["model_dir"]))
    stream = StreamConfig(name="arm1", directory=log.parent, timestamp_field="ts", channels=stream_channels())
    policy = AlertPolicy(
        scorer.manifest,
        PolicyConfig(),
        robot_id="bench-robot",
        site="bench",
        stream="arm1",
        agent_version=__version__,
        clock=SystemClock(),
    )
    quarantine = Quarantine(Path(args["root"]) / "quarantine.jsonl", 1 << 20)
    pipeline = StreamPipeline(stream, IngestConfig(), scorer, policy, quarantine)
    started = time.perf_counter()
    events = 0
    with log.open("rb") as handle:
        header = handle.readline()
        offset = len(header)
        rest = b""
        while chunk := handle.read(1 << 20):
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            events += len(pipeline.process([Block("bench", log, data[:cut], offset, header)], replayed=True))
            offset += cut
    elapsed = time.perf_counter() - started
    counters = pipeline.counters
    write_result(
        args,
        {
            "lines": counters.lines,
            "windows": counters.windows,
            "events": events,
            "seconds": elapsed,
            **proc_memory_mib(),
        },
    )


def worker_naive(args: dict[str, Any]) -> None:
    """The naive agent: pandas read_csv per chunk, pandas features per window, predict_proba per window."""
    import pickle

    import numpy as np
    import pandas as pd

    forest = pickle.loads(Path(args["sk_model"]).read_bytes())
    columns = list(args["columns"])
    window, hop = int(args["window"]), int(args["hop"])
    centred = pd.Series(np.arange(window, dtype=np.float64) - (window - 1) / 2.0)
    denominator = float((centred * centred).sum())
    probabilities: list[Any] = []
    started = time.perf_counter()
    buffer: pd.DataFrame | None = None
    base = 0  # stream row number of buffer's first row
    next_start = 0
    seen = 0
    for chunk in pd.read_csv(args["log"], chunksize=4096, nrows=int(args["max_lines"])):
        chunk = chunk[columns]
        seen += len(chunk)
        buffer = chunk if buffer is None else pd.concat([buffer, chunk], ignore_index=True)
        while next_start + window <= seen:
            frame = buffer.iloc[next_start - base : next_start - base + window].reset_index(drop=True)
            slope = frame.mul(centred, axis=0).sum() / denominator
            stats = pd.concat(
                [frame.mean(), frame.std(ddof=0), frame.min(), frame.max(), slope], axis=1
            )  # rows: channels, columns: statistics → channel-major when flattened
            row = stats.to_numpy().reshape(1, -1)
            probabilities.append(forest.predict_proba(row)[0])
            next_start += hop
        buffer = buffer.iloc[next_start - base :]
        base = next_start
    elapsed = time.perf_counter() - started
    result = np.asarray(probabilities)
    if args.get("save"):
        np.save(args["save"], result)
    write_result(args, {"lines": seen, "windows": len(result), "seconds": elapsed, **proc_memory_mib()})


def worker_one_row(args: dict[str, Any]) -> None:
    """Scoring latency for one row and for a batch: onnxruntime (OnnxScorer) against scikit-learn."""
    import pickle

    import numpy as np

    from agent.models.scorer import OnnxScorer

    scorer = OnnxScorer.load(Path(args["model_dir"]))
    forest = pickle.loads(Path(args["sk_model"]).read_bytes())
    rng = np.random.default_rng(0)
    reference = scorer.manifest.reference
    x = rng.normal(reference.mean, reference.std, size=(1024, scorer.manifest.feature_spec.n_features))

    def timed(fn: Callable[[Any], Any], data: Any, n: int) -> list[float]:
        fn(data)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn(data)
            out.append((time.perf_counter() - t) * 1e3)
        return out

    n = int(args["n"])
    write_result(
        args,
        {
            "ort_1": timed(scorer.score, x[:1], n * 10),
            "sk_1": timed(forest.predict_proba, x[:1], n),
            "ort_1024": timed(scorer.score, x, max(5, n // 5)),
            "sk_1024": timed(forest.predict_proba, x, max(5, n // 5)),
        },
    )


WORKERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "bare": worker_bare,
    "imports": worker_imports,
    "daemon": worker_daemon,
    "swaps": worker_swaps,
    "swap-live": worker_swap_live,
    "ours": worker_ours,
    "pipeline": worker_pipeline,
    "naive": worker_naive,
    "one-row": worker_one_row,
}


# -- sections --------------------------------------------------------------------------------------


ROBOT_HIDDEN = ["rich", "pygments"]
"""Installed in the dev environment (typer needs rich) but not an agent dependency; structlog.dev
imports rich when it is present, which a robot install would not have."""


def section_memory(assets: Assets, plan: Plan) -> None:
    work = assets.work
    repeats = plan.memory_repeats

    def fresh(hide: list[str]) -> list[dict[str, Any]]:
        runs = []
        for _ in range(repeats):
            root = Path(tempfile.mkdtemp(prefix="fresh-", dir=work))
            got = run_worker(
                work,
                "daemon",
                {
                    "root": str(root),
                    "log_dir": str(assets.log_dir),
                    "model_dir": str(assets.agent_model_dir),
                    "n_lines": assets.n_lines,
                    "hide": hide,
                },
            )
            if got["lines"] != assets.n_lines:
                raise BenchFailure(f"fresh agent read {got['lines']} of {assets.n_lines} lines")
            runs.append(got)
        return runs

    b = median([run_worker(work, "bare", {})["rss"] for _ in range(repeats)])
    rows: list[list[object]] = [["bare python (baseline)", fmt(b), "", "", ""]]
    for hide, where in (([], "dev venv"), (ROBOT_HIDDEN, "without rich, pygments (robot install)")):
        imports = median([run_worker(work, "imports", {"hide": hide})["rss"] for _ in range(repeats)])
        runs = fresh(hide)
        started = median([r["after_start"]["rss"] for r in runs])
        caught = median([r["caught_up"]["rss"] for r in runs])
        peak = median([r["caught_up"]["peak"] for r in runs])
        rows += [
            [f"{where}: import agent.daemon", fmt(imports), f"+{fmt(imports - b)}", "", ""],
            [
                f"{where}: daemon started, model loaded",
                fmt(started),
                f"+{fmt(started - b)}",
                "≤ 80",
                verdict(started <= 80),
            ],
            [
                f"{where}: after catching up {assets.n_lines:,} lines",
                fmt(caught),
                f"+{fmt(caught - b)}",
                "≤ 80",
                verdict(caught <= 80),
            ],
            [f"{where}:   peak (VmHWM) during catch-up", fmt(peak), f"+{fmt(peak - b)}", "", ""],
        ]
    table(
        f"a1. Agent memory, fresh process (median of {repeats} subprocesses; "
        f"model: {assets.agent_model_label})",
        ["process", "RSS MiB", "vs bare", "target", "verdict"],
        rows,
    )

    models = [(assets.agent_model_dir, assets.agent_model_label)]
    if plan.swaps_forest and assets.agent_model_dir != assets.model_dir:
        models.append((assets.model_dir, "benchmark forest"))
    for model_dir, model_label in models:
        _swap_memory(assets, plan, model_dir, model_label)


def _swap_memory(assets: Assets, plan: Plan, model_dir: Path, model_label: str) -> None:
    n = plan.swaps
    variants = ["release_freed_memory", "malloc_trim only", "gc only", "no-op"]
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(plan.swap_repeats):
        for variant in variants:
            results[variant].append(
                run_worker(assets.work, "swaps", {"model_dir": str(model_dir), "n": n, "variant": variant})
            )
    mark_names = sorted(results[variants[0]][0]["marks"], key=int)
    rows = []
    for variant in variants:
        got = results[variant]
        marks = {k: median([r["marks"][k] for r in got]) for k in mark_names}
        first, last = marks["1"], marks[str(n)]
        load = median([median(r["load_ms"]) for r in got])
        label = {
            "release_freed_memory": "ours: accept → release_freed_memory",
            "malloc_trim only": "accept → malloc_trim(0) only",
            "gc only": "accept → gc.collect only",
            "no-op": "accept, release a no-op (baseline)",
        }[variant]
        rows.append(
            [
                label,
                *[fmt(marks[k]) for k in mark_names],
                f"{last - first:+.1f}",
                "≤ +5",
                verdict(last - first <= 5),
                fmt(load, 2),
            ]
        )
    size = (model_dir / "model.onnx").stat().st_size
    table(
        f"a2. RSS (MiB) over {n:,} model swaps, each variant in its own subprocess "
        f"(median of {plan.swap_repeats}; {model_label}, {size / 1024:,.0f} KiB)",
        ["variant", *[f"after {k}" for k in mark_names], "growth", "target", "verdict", "load ms"],
        rows,
        note="growth = RSS after the last swap − after the first; "
        "load ms = OnnxScorer.load + golden test (p50).",
    )


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))] if ordered else float("nan")


def section_swap(assets: Assets, plan: Plan) -> None:
    rows: list[list[object]] = []
    stall_rows: list[list[object]] = []
    cost_rows: list[list[object]] = []
    for check_interval_s, repeats in plan.live_swaps:
        root = assets.work / f"swap-{check_interval_s}"
        root.mkdir()
        got = run_worker(
            assets.work,
            "swap-live",
            {
                "root": str(root),
                "model_dir": str(assets.model_dir),
                "rate": 1000.0,
                "repeats": repeats,
                "check_interval_s": check_interval_s,
            },
        )
        if got["final_version"] != repeats + 1:
            raise BenchFailure(f"swap run ended on version {got['final_version']}, expected {repeats + 1}")
        if got["lines_read"] != got["written"]:
            raise BenchFailure(f"live daemon read {got['lines_read']} of {got['written']} lines written")
        ticks = got["ticks"]  # start, end, lines, version after, busy
        appeared = {int(k): v for k, v in got["appeared"].items()}
        latencies, swap_busy, swap_gaps = [], [], []
        swap_at: list[int] = []
        for version, at in appeared.items():
            k = next(i for i, t in enumerate(ticks) if t[3] >= version)
            swap_at.append(k)
            latencies.append((ticks[k][1] - at) * 1e3)
            swap_busy.append(ticks[k][4] * 1e3)
            before = [t for t in ticks[: k + 1] if t[2] > 0]
            after = [t for t in ticks[k + 1 :] if t[2] > 0]
            if before and after:
                swap_gaps.append((after[0][0] - before[-1][0]) * 1e3)

        def near_swap(i: int, swap_at: list[int] = swap_at) -> bool:
            return any(abs(i - k) <= 3 for k in swap_at)

        busy = [t[4] * 1e3 for i, t in enumerate(ticks) if not near_swap(i)]
        processing = [(i, t) for i, t in enumerate(ticks) if t[2] > 0]
        gaps = [
            (y[0] - x[0]) * 1e3
            for (i, x), (j, y) in itertools.pairwise(processing)
            if not near_swap(i) and not near_swap(j) and not any(i <= k <= j for k in swap_at)
        ]
        phase: dict[str, list[float]] = {}
        for name, seconds in got["phases"]:
            phase.setdefault(name, []).append(seconds * 1e3)
        label = f"check_interval_s = {check_interval_s}"
        rows.append(
            [
                label,
                repeats,
                fmt(median(latencies)),
                fmt(max(latencies)),
                "≤ 150",
                verdict(max(latencies) <= 150),
            ]
        )
        stall_rows += [
            [
                f"{label}, ticks without a swap (baseline)",
                len(busy),
                fmt(median(busy), 2),
                fmt(_pct(busy, 0.99), 2),
                fmt(max(busy), 2),
                fmt(median(gaps), 2),
                fmt(_pct(gaps, 0.99), 2),
                fmt(max(gaps), 2),
                "",
                "",
            ],
            [
                f"{label}, the tick that swaps",
                len(swap_busy),
                fmt(median(swap_busy), 2),
                "",
                fmt(max(swap_busy), 2),
                fmt(median(swap_gaps), 2),
                "",
                fmt(max(swap_gaps), 2),
                "≤ 5",
                verdict(max(swap_busy) <= 5),
            ],
        ]
        cost_rows.append(
            [
                label,
                fmt(median(phase.get("poll_none", [float("nan")])), 2),
                fmt(median(phase["poll_found"]), 1),
                fmt(median(phase["accept"]), 1),
                fmt(median(phase.get("release", [float("nan")])), 1),
                fmt(median(phase["gc.collect"]), 1),
                fmt(median(phase["malloc_trim"]), 2),
                fmt(median(swap_busy), 1),
                fmt(median(swap_busy) - median(phase["accept"]), 1),
            ]
        )
    table(
        "b1. Model swap in a live daemon: verified model in the store → scoring with it "
        "(ms; 1 kHz writer, inotify)",
        ["model check", "swaps", "p50", "max", "target", "verdict"],
        rows,
        note=(
            "From the rename of a new version's directory into the store to the end of the tick that\n"
            "swapped: "
            "the model watcher thread wakes on the store's inotify event (or its check_interval_s poll),\n"
            "loads and verifies the model off the loop; the loop then only swaps references.\n"
            "Probation is off here (probation_windows = 0): this times the swap itself."
        ),
    )
    table(
        "b2. Where the swap time goes (ms, p50)",
        [
            "model check",
            "idle check",
            "poll: load+verify (watcher thread)",
            "accept",
            "release_freed_memory (watcher thread)",
            "gc.collect",
            "malloc_trim",
            "swap tick",
            "rest",
        ],
        cost_rows,
        note=(
            "idle check = ModelSlot.poll finding nothing new (on the watcher thread); accept (loop) swaps\n"
            "the reference, the heap trim runs later on the watcher thread (not timed here: '-');\n"
            "gc.collect and malloc_trim alone are timed in the same process after the run;\n"
            "swap tick = busy time of the swapping tick; rest = swap tick − accept (derived)."
        ),
    )
    table(
        "b3. Scoring-loop stall during a swap, against the same loop without one (ms)",
        ["ticks", "n", "busy p50", "p99", "max", "gap p50", "p99", "max", "target", "verdict"],
        stall_rows,
        note=(
            "busy = time inside a tick, less its wait for file events (the loop can do nothing else):\n"
            "the stall, judged against the target; gap = start of one line-processing tick → start of the\n"
            "next (the loop sleeps between windows: lines that cannot complete one are held, hop 32 here)."
        ),
    )


def section_naive(assets: Assets, plan: Plan) -> None:
    work = assets.work
    log = assets.log_dir / LOG_NAME
    repeats = plan.repeats
    naive_repeats = plan.naive_repeats
    naive_lines = plan.naive_lines
    ours_save = work / "ours.npy"
    naive_save = work / "naive.npy"
    ours = [
        run_worker(
            work, "ours", {"log": str(log), "model_dir": str(assets.model_dir), "save": str(ours_save)}
        )
        for _ in range(repeats)
    ]
    pipeline = []
    for i in range(repeats):
        root = work / f"pipeline-{i}"
        root.mkdir()
        pipeline.append(
            run_worker(
                work, "pipeline", {"log": str(log), "model_dir": str(assets.model_dir), "root": str(root)}
            )
        )

    def daemon_runs(read_chunk_bytes: int | None) -> list[dict[str, Any]]:
        runs = []
        for _ in range(repeats):
            root = Path(tempfile.mkdtemp(prefix="daemon-", dir=work))
            runs.append(
                run_worker(
                    work,
                    "daemon",
                    {
                        "root": str(root),
                        "log_dir": str(assets.log_dir),
                        "model_dir": str(assets.model_dir),
                        "n_lines": assets.n_lines,
                        "read_chunk_bytes": read_chunk_bytes,
                    },
                )
            )
        return runs

    daemon = daemon_runs(None)
    daemon_small = daemon_runs(256 * 1024)
    naive = [
        run_worker(
            work,
            "naive",
            {
                "log": str(log),
                "sk_model": str(assets.sk_model),
                "columns": list(assets.file_columns),
                "window": WINDOW,
                "hop": HOP,
                "max_lines": naive_lines,
                "save": str(naive_save),
            },
        )
        for _ in range(naive_repeats)
    ]
    for name, runs in (("ours", ours), ("pipeline", pipeline)):
        if any(r["lines"] != assets.n_lines for r in runs):
            raise BenchFailure(f"{name} read {[r['lines'] for r in runs]} lines of {assets.n_lines}")
    if any(r["lines"] != assets.n_lines for r in daemon + daemon_small):
        lines = [r["lines"] for r in daemon + daemon_small]
        raise BenchFailure(f"daemon read {lines} lines of {assets.n_lines}")

    # Parity: our scores against scikit-learn's on the windows both computed.
    import numpy as np

    a, b = np.load(ours_save), np.load(naive_save)
    n = len(b)
    expected_windows = (naive_lines - WINDOW) // HOP + 1
    if n != expected_windows or len(a) < n:
        raise BenchFailure(
            f"window counts: naive {n}, ours {len(a)}, expected {expected_windows} in the prefix"
        )
    diff = np.abs(a[:n] - b)
    agree = float(np.mean(a[:n].argmax(axis=1) == b.argmax(axis=1)))
    if agree < 0.99:
        raise BenchFailure(f"ours and scikit-learn agree on the class of only {agree:.1%} of windows")

    def rate(runs: list[dict[str, Any]]) -> float:
        return median([r["lines"] / r["seconds"] for r in runs])

    def peak(runs: list[dict[str, Any]], key: str = "peak") -> float:
        return median([r[key] for r in runs])

    naive_rate = rate(naive)
    naive_peak = peak(naive)
    rows = [
        [
            "naive: pandas + sklearn per window (baseline)",
            f"{naive_lines:,}",
            fmt(naive_rate, 0),
            "1.0×",
            fmt(naive_peak),
            "1.00×",
            "",
            "",
        ]
    ]
    for label, runs, memory in (
        ("ours: RecordParser → StreamingFeaturizer → OnnxScorer", ours, peak(ours)),
        ("ours: StreamPipeline (+ alert policy)", pipeline, peak(pipeline)),
        (
            "ours: AgentDaemon catch-up (+ follower, SQLite)",
            daemon,
            median([r["caught_up"]["peak"] for r in daemon]),
        ),
        (
            "ours: AgentDaemon catch-up, read_chunk_bytes 256 KiB",
            daemon_small,
            median([r["caught_up"]["peak"] for r in daemon_small]),
        ),
    ):
        speed = rate(runs) / naive_rate
        ratio = memory / naive_peak
        rows.append(
            [
                label,
                f"{runs[0]['lines']:,}",
                fmt(rate(runs), 0),
                f"{speed:,.0f}×",
                fmt(memory),
                f"{ratio:.2f}×",
                verdict(speed >= 20),
                verdict(ratio <= 0.6),
            ]
        )
    table(
        f"c1. Against a naive agent, same log ({RATE_HZ:.0f} Hz simulated arm, "
        f"{len(assets.file_columns)} channels, "
        f"window {WINDOW}/hop {HOP}); medians of {repeats} (naive: {naive_repeats}) subprocesses",
        ["agent", "lines", "lines/s", "speed", "peak RSS MiB", "memory", "≥ 20×", "≤ 0.6×"],
        rows,
        note=(
            f"The naive agent reads the first {naive_lines:,} lines only "
            f"({median([r['windows'] / r['seconds'] for r in naive]):,.0f} windows/s); "
            "throughput is per line either way.\n"
            f"Parity on those {n:,} windows: same class {agree:.2%}, max |Δp| {diff.max():.2e}."
        ),
    )

    one = run_worker(
        work,
        "one-row",
        {"model_dir": str(assets.model_dir), "sk_model": str(assets.sk_model), "n": plan.one_row_calls},
    )
    ort1, sk1 = median(one["ort_1"]), median(one["sk_1"])
    ortb, skb = median(one["ort_1024"]), median(one["sk_1024"])
    table(
        "c2. Scoring the 100-tree forest: onnxruntime (OnnxScorer, 1 thread) vs scikit-learn "
        "predict_proba (ms, median)",
        ["batch", "scikit-learn (baseline)", "onnxruntime", "speed-up", "DESIGN prototype"],
        [
            ["1 row", fmt(sk1, 3), fmt(ort1, 3), f"{sk1 / ort1:,.0f}×", "19 ms vs 0.2 ms (95×)"],
            ["1,024 rows", fmt(skb, 2), fmt(ortb, 2), f"{skb / ortb:,.1f}×", ""],
        ],
    )


# -- main ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller runs (~1 minute), e.g. for CI")
    parser.add_argument("--only", default="a,b,c", help="sections to run, e.g. 'a,c'")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("payload", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        WORKERS[args.worker](json.loads(args.payload))
        return 0

    command = "python bench/bench_agent.py" + (" --quick" if args.quick else "")
    if args.only != "a,b,c":
        command += f" --only {args.only}"
    print(f"$ {command}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    plan = QUICK if args.quick else Plan()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} (timings are inflated when other work shares the cores)")
    started = time.perf_counter()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-agent-"))
    work.mkdir(parents=True, exist_ok=True)
    sections = {"a": section_memory, "b": section_swap, "c": section_naive}
    try:
        begun = time.perf_counter()
        assets = build_assets(work, plan)
        print(f"  (assets: {time.perf_counter() - begun:.0f} s)")
        for key in args.only.split(","):
            begun = time.perf_counter()
            sections[key.strip()](assets, plan)
            print(f"  (section {key.strip()}: {time.perf_counter() - begun:.0f} s)")
    except BenchFailure as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
