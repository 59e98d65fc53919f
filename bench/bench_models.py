"""Model admission benchmark: what each check costs, and the probe child's time to verdict.

For each model it times, as medians over ``--repeat`` runs in this process:

- the signature check (two-tier: certificate, then manifest) and the manifest parse;
- the static checks of the ONNX bytes (the agent's own protobuf reader);
- **baseline**: building the onnxruntime session in-process and running the golden vectors
  (what the agent did before the child existed, and still does after the child's verdict);
- **the probe child** (``python -m agent.models.probe`` under RLIMIT_AS/CPU): time from spawn to
  verdict, and the child's peak RSS.

Models: the tiny linear test model, the bundled model (a 147 KiB tree ensemble), a 40-tree
forest exported by skl2onnx (a few MiB of unpacked attributes: the static checks' worst case
in practice), and two that must be refused: the 220-byte memory bomb (``Expand`` to 300M
elements) and an endless ``Loop`` (stopped by a 2 s CPU limit). Also a bare interpreter start
and ``import onnxruntime`` in a fresh interpreter, to show where the child's time goes.

Usage: .venv/bin/python bench/bench_models.py [--repeat 10] [--quick]
Exits non-zero only if a verdict is wrong (a good model refused, a bad one accepted).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.config import packaged_model  # noqa: E402
from agent.models.keys import Keyring  # noqa: E402
from agent.models.probe import ProbeLimits, ProbeVerdict, probe_model  # noqa: E402
from agent.models.scorer import OnnxScorer  # noqa: E402
from agent.models.static_check import StaticPolicy, check_model  # noqa: E402
from agent.models.verify import ModelVerifier  # noqa: E402
from tests.models import write_linear_model  # noqa: E402
from tests.signing_keys import fleet_keys  # noqa: E402
from tests.test_model_probe import endless_loop, memory_bomb, model_dir  # noqa: E402
from trainer.signing import sign_model_dir  # noqa: E402


def timed(function: Callable[[], object], repeat: int) -> float:
    """Median wall-clock milliseconds of `function`."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1e3)
    return float(statistics.median(samples))


def forest(directory: Path, trees: int) -> None:
    """A skl2onnx RandomForest over the test model's features, with the test manifest's interface."""
    import hashlib

    import numpy as np
    from onnxruntime import InferenceSession
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestRegressor

    manifest = write_linear_model(directory)
    n = manifest.feature_spec.n_features
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, n)).astype(np.float32)
    y = x[:, 0] + rng.normal(scale=0.1, size=len(x))
    model = RandomForestRegressor(n_estimators=trees, max_depth=14, random_state=0, n_jobs=2).fit(x, y)
    onnx_model = convert_sklearn(
        model,
        initial_types=[("features", FloatTensorType([None, n]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onnx_model.graph.output[0].name = "score"
    for node in onnx_model.graph.node:
        node.output[:] = ["score" if o == "variable" else o for o in node.output]
    data = onnx_model.SerializeToString()
    session = InferenceSession(data, providers=["CPUExecutionProvider"])
    golden = tuple(
        g.model_copy(
            update={
                "expected": {
                    "score": tuple(
                        float(v)
                        for v in session.run(None, {"features": np.asarray([g.features], np.float32)})[0][0]
                    )
                }
            }
        )
        for g in manifest.golden
    )
    updated = manifest.model_copy(
        update={"sha256": hashlib.sha256(data).hexdigest(), "length": len(data), "golden": golden}
    )
    (directory / "model.onnx").write_bytes(data)
    (directory / "manifest.json").write_text(updated.to_json())


def fresh_interpreter(code: str, repeat: int) -> float:
    return timed(lambda: subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO), repeat)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, headers))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for k, row in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 repeats, a 10-tree forest")
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else args.repeat
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; repeats {repeat}")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        work = Path(tmp)
        keys = fleet_keys(work / "keys")
        policy = StaticPolicy(min_golden=3)
        verifier = ModelVerifier(Keyring.load(keys.trusted), policy)
        models: list[tuple[str, Path, bool]] = []
        write_linear_model(work / "linear")
        models.append(("test linear (MatMul+Add)", work / "linear", True))
        bundled = work / "bundled"
        bundled.mkdir()
        for name in ("model.onnx", "manifest.json"):
            (bundled / name).write_bytes((packaged_model() / name).read_bytes())
        models.append(("bundled (tree ensemble)", bundled, True))
        trees = 10 if args.quick else 40
        forest(work / "forest", trees)
        models.append((f"skl2onnx forest, {trees} trees", work / "forest", True))
        model_dir(work / "bomb", memory_bomb())
        models.append(("memory bomb (Expand 300M)", work / "bomb", False))
        model_dir(work / "loop", endless_loop())
        models.append(("endless Loop", work / "loop", False))
        for _, directory, _ in models:
            sign_model_dir(directory, keys.private)

        limits = ProbeLimits(cpu_s=2.0, timeout_s=60.0)
        rows = []
        for label, directory, good in models:
            size = (directory / "model.onnx").stat().st_size
            verified = verifier.verify_manifest(directory)
            data = (directory / "model.onnx").read_bytes()
            manifest_bytes = verified.manifest_bytes
            signature_ms = timed(lambda d=directory: verifier.verify_manifest(d), repeat)
            static_ms = timed(lambda m=verified.manifest, b=data: check_model(b, m, policy), repeat)
            if good:
                in_process_ms = timed(
                    lambda b=data, m=verified.manifest: OnnxScorer(b, m).check_golden(), repeat
                )
            else:
                in_process_ms = float("nan")  # the baseline would need gigabytes or never end
            verdicts: list[ProbeVerdict] = []

            def run_probe(
                b: bytes = data, mb: bytes = manifest_bytes, out: list[ProbeVerdict] = verdicts
            ) -> None:
                out.append(probe_model(mb, b, limits))

            probe_ms = timed(run_probe, 1 if not good and label.startswith("endless") else repeat)
            last = verdicts[-1]
            if last.ok != good:
                failures += 1
                print(f"WRONG VERDICT for {label}: ok={last.ok} {last.reason}")
            rss = f"{last.peak_rss_bytes / 2**20:.1f}" if last.peak_rss_bytes else "-"
            rows.append(
                (
                    label,
                    f"{size:,}",
                    f"{signature_ms:.2f}",
                    f"{static_ms:.2f}",
                    "-" if in_process_ms != in_process_ms else f"{in_process_ms:.1f}",
                    f"{probe_ms:.0f}",
                    rss,
                    "ok" if last.ok else last.reason[:48],
                )
            )
        table(
            "Admission cost per model (ms, medians; the probe child against the in-process load, same run)",
            ("model", "bytes", "signature", "static", "in-process", "probe child", "child MiB", "verdict"),
            rows,
        )
        bare = fresh_interpreter("pass", repeat)
        ort_import = fresh_interpreter("import onnxruntime, numpy", repeat)
        probe_import = fresh_interpreter("import agent.models.probe, agent.models.scorer", repeat)
        table(
            "Where the child's time goes (ms, a fresh interpreter each time)",
            ("start", "ms"),
            [
                ("python -c pass", f"{bare:.0f}"),
                ("import onnxruntime, numpy", f"{ort_import:.0f}"),
                ("import agent.models.probe + scorer", f"{probe_import:.0f}"),
            ],
        )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
