"""Loading and golden-testing a candidate model in a child process with hard limits, before the agent does.

A model is code for onnxruntime: a 429-byte graph can ask for gigabytes (``Expand`` to 300M
elements) or loop for hours. `probe_model` runs ``python -m agent.models.probe`` (the same
interpreter), hands it the verified manifest and model bytes on stdin, and waits for a
one-line JSON verdict. The child:

- sets ``RLIMIT_CORE`` to 0, imports onnxruntime, then caps its address space
  (``RLIMIT_AS``) at what it holds then plus ``agent.model.probe_memory_bytes``, and its CPU
  time (``RLIMIT_CPU``) at ``probe_cpu_s``;
- builds the session exactly as the agent does (`agent.models.scorer.OnnxScorer`) and runs
  the golden vectors;
- runs in an empty temporary working directory, so a model that still reached for external
  data finds nothing.

The parent kills it after ``probe_timeout_s`` of wall-clock time. A verdict other than "ok"
(an error, a limit hit, a crash, a timeout) refuses the model with that reason; only then is
the session built in the agent. The probe costs one interpreter start plus the load (time to
verdict: ``bench/bench_models.py``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.config import ModelConfig

_LENGTH = struct.Struct(">I")
_STDERR_TAIL: Final = 300
_OUT_OF_MEMORY: Final = ("Failed to allocate memory", "bad_alloc", "MemoryError")


@dataclass(frozen=True, slots=True)
class ProbeLimits:
    """The child's limits: address space beyond its start, CPU seconds, wall-clock seconds."""

    memory_bytes: int = 256 << 20
    cpu_s: float = 10.0
    timeout_s: float = 30.0

    @classmethod
    def from_config(cls, config: ModelConfig) -> ProbeLimits:
        """The limits ``[agent.model]`` sets."""
        return cls(config.probe_memory_bytes, config.probe_cpu_s, config.probe_timeout_s)


@dataclass(frozen=True, slots=True)
class ProbeVerdict:
    """What the child found. ``model_fault`` is False when the probe itself could not run."""

    ok: bool
    reason: str
    seconds: float
    peak_rss_bytes: int | None = None
    model_fault: bool = True


def probe_model(manifest_bytes: bytes, model_bytes: bytes, limits: ProbeLimits) -> ProbeVerdict:
    """Load and golden-test a model in a limited child; never raises for anything the model does."""
    started = time.monotonic()
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.update({"MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"})
    command = [
        sys.executable,
        "-m",
        "agent.models.probe",
        str(limits.memory_bytes),
        repr(limits.cpu_s),
    ]
    payload = _LENGTH.pack(len(manifest_bytes)) + manifest_bytes + model_bytes
    with tempfile.TemporaryDirectory(prefix="robotpm-probe-") as empty:
        try:
            child = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=empty,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            return ProbeVerdict(False, f"the model probe could not start: {exc}", 0.0, model_fault=False)
        try:
            out, err = child.communicate(payload, timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            seconds = time.monotonic() - started
            return ProbeVerdict(
                False, f"loading took longer than probe_timeout_s {limits.timeout_s}s", seconds
            )
    seconds = time.monotonic() - started
    return _verdict(child.returncode, out, err, seconds, limits)


def _verdict(code: int, out: bytes, err: bytes, seconds: float, limits: ProbeLimits) -> ProbeVerdict:
    if code == 0:
        try:
            report = json.loads(out.decode("utf-8").strip().splitlines()[-1])
            return ProbeVerdict(bool(report["ok"]), str(report["reason"]), seconds, report.get("peak_rss"))
        except (ValueError, KeyError, IndexError, TypeError):
            pass
    tail = err.decode("utf-8", errors="replace").strip()[-_STDERR_TAIL:]
    if code == -signal.SIGXCPU:
        return ProbeVerdict(False, f"loading used more than probe_cpu_s {limits.cpu_s}s of CPU", seconds)
    if code == -signal.SIGKILL:
        return ProbeVerdict(False, "the model probe was killed (out of memory?)", seconds)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return ProbeVerdict(False, f"onnxruntime crashed on the model ({name})", seconds)
    if any(sign in tail for sign in _OUT_OF_MEMORY):
        return ProbeVerdict(
            False, f"loading needs more than probe_memory_bytes {limits.memory_bytes}", seconds
        )
    return ProbeVerdict(
        False, f"the model probe failed (exit {code}): {tail}", seconds, model_fault=code != 0
    )


# -- the child ----------------------------------------------------------------------------------


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _within(which: int, wanted: int) -> int:
    """`wanted`, or the inherited hard limit if that is lower (a limit can only be lowered)."""
    hard = resource.getrlimit(which)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def _main(argv: list[str]) -> int:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    memory_bytes, cpu_s = int(argv[0]), float(argv[1])
    data = sys.stdin.buffer.read()
    (length,) = _LENGTH.unpack_from(data)
    manifest_bytes, model_bytes = data[4 : 4 + length], data[4 + length :]
    del data

    from agent.contract.errors import RobotPMError
    from agent.contract.manifest import ModelManifest
    from agent.models.scorer import OnnxScorer

    limit = _within(resource.RLIMIT_AS, _status_bytes("VmSize") + memory_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cpu = _within(resource.RLIMIT_CPU, max(1, math.ceil(cpu_s)))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, _within(resource.RLIMIT_CPU, cpu + 1)))
    ok, reason = True, ""
    try:
        OnnxScorer(model_bytes, ModelManifest.from_json(manifest_bytes)).check_golden()
    except RobotPMError as exc:
        ok, reason = False, str(exc)
        if any(sign in reason for sign in _OUT_OF_MEMORY):
            reason = f"loading needs more than probe_memory_bytes {memory_bytes}: {reason[:300]}"
    except MemoryError:
        ok, reason = False, f"loading needs more than probe_memory_bytes {memory_bytes}"
    report = {"ok": ok, "reason": reason, "peak_rss": _status_bytes("VmHWM")}
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
