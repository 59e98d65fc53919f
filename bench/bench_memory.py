"""Agent memory on a robot install: RSS of the real ``robotpm-agent run`` from the wheel, base deps only.

The wheel is built from this tree and installed into a fresh venv (no dev, trainer or demo
extras: what a robot gets), or ``--venv`` names one made that way. In that venv, in the same
run and each ``--repeats`` times (medians):

1. a bare interpreter (the baseline every Python process pays);
2. the interpreter after the agent's imports (``agent.cli`` and ``agent.daemon``, what
   ``robotpm-agent run`` loads before it starts);
3. ``robotpm-agent run --profile prod`` with the config template and the packaged bundled model,
   connected to a real mosquitto, once it says READY=1 (model loaded, pipeline running) and
   again after it has read a 3,000-line controller log to its end (peak VmHWM too).

Then where the memory goes: the started agent's resident memory by mapping at READY=1 (each
shared library's pages, the malloc heap, the anonymous mappings where Python's objects live), and
one interpreter that imports the agent's dependencies one by one and loads one onnxruntime
session of the bundled model, printing what each step adds to the heap, to anonymous mappings
and to mapped files. The versions of the heavy dependencies are printed: the figures move with
them (onnxruntime's share grows with each release, which is why pyproject.toml pins it to 1.20:
the comment there says when to lift it).
Target: the started agent ≤ 80 MiB.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_agent import fmt, median, table, verdict  # noqa: E402

from robotpm_sim.fleet import simulate_history  # noqa: E402
from robotpm_sim.formatting import format_records  # noqa: E402
from robotpm_sim.records import header_line  # noqa: E402
from tests import robot_install as install  # noqa: E402
from tests.mosquitto import Broker  # noqa: E402

TARGET_MIB = 80.0
LOG_LINES = 3000
WAIT = "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"
IMPORTS = "import agent.cli, agent.daemon; "
BREAKDOWN = """
import sys
def rss():
    kinds = {"[heap]": 0, "anon": 0, "file": 0}
    kind = "anon"
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if fields[0].endswith(":"):
                if fields[0] == "Rss:":
                    kinds[kind] += int(fields[1])
            else:
                name = fields[5] if len(fields) > 5 else ""
                kind = "file" if name.startswith("/") else ("[heap]" if name == "[heap]" else "anon")
    return {k: v / 1024 for k, v in kinds.items()}
def show(label, now, last):
    total = sum(now.values())
    if last is None:
        print("\\t".join([label, "", "", "", "", f"{total:.2f}"]))
        return
    adds = [f"{now[k] - last[k]:+.2f}" for k in now]
    print("\\t".join([label, *adds, f"{total - sum(last.values()):.2f}", f"{total:.2f}"]))
last = rss()
show("bare interpreter", last, None)
for module in sys.argv[2:]:
    __import__(module)
    now = rss()
    show(module, now, last)
    last = now
from agent.models.scorer import OnnxScorer
OnnxScorer.load(__import__("pathlib").Path(sys.argv[1])).check_golden()
show("one onnxruntime session of the bundled model, golden-tested", rss(), last)
"""
VERSIONS = """
import importlib.metadata as m, platform
names = ("onnxruntime", "numpy", "pydantic", "pydantic-core", "paho-mqtt", "structlog")
print(f"Python {platform.python_version()}; " + ", ".join(f"{n} {m.version(n)}" for n in names))
"""
DEPENDENCY_ORDER = [
    "numpy",
    "onnxruntime",
    "paho.mqtt.client",
    "sqlite3",
    "structlog",
    "pydantic",
    "agent.contract",
    "agent.config",
    "agent.cli",
    "agent.daemon",
]
"""The agent's dependencies first (each with what it pulls in), then the agent's own modules."""


def status_mib(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon and RssFile of a process, in MiB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


ANON = "anonymous mappings (Python's object arenas, thread stacks, large allocations)"
HEAP = "[heap] (malloc: onnxruntime, pydantic-core, large Python objects)"


def mappings_mib(pid: int) -> dict[str, float]:
    """Resident MiB of a process by mapping: each file by its name, the malloc heap, the anonymous rest."""
    out: dict[str, float] = {}
    name = ANON
    with open(f"/proc/{pid}/smaps") as handle:
        for line in handle:
            fields = line.split()
            if not fields[0].endswith(":"):
                path = fields[5] if len(fields) > 5 else ""
                if path.startswith("/"):
                    name = path.rsplit("/site-packages/", 1)[-1]
                else:
                    name = HEAP if path == "[heap]" else ANON
            elif fields[0] == "Rss:":
                out[name] = out.get(name, 0.0) + int(fields[1]) / 1024
    return out


def waiting_interpreter(python: Path, prelude: str) -> dict[str, float]:
    """RSS of `python` after running `prelude`, measured while it waits."""
    process = subprocess.Popen(
        [str(python), "-c", prelude + WAIT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=install.clean_env(),
        cwd="/",
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline() != b"ready\n":
            raise RuntimeError(f"{python} -c {prelude!r} failed")
        return status_mib(process.pid)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        process.wait(30)


class Robot:
    """A robot's files under one root: config from the installed template, the controller's log."""

    def __init__(self, root: Path, python: Path, broker_port: int) -> None:
        self.root = root
        self.python = python
        self.agent = python.parent / "robotpm-agent"
        self.config = root / "etc" / "robotpm" / "config.toml"
        self.config.parent.mkdir(parents=True)
        template = (install.package_dir(python, "agent") / "install" / "config.toml").read_text()
        self.config.write_text(install.configure_template(template, root))
        credential = root / "run" / "credentials" / "robotpm-agent.service" / "mqtt"
        credential.parent.mkdir(parents=True)
        credential.write_text("robot-001:bench\n")
        self.logs = root / "var" / "log" / "robot" / "arm1"
        self.logs.mkdir(parents=True)
        _, values, _ = simulate_history("robot-001", LOG_LINES / 50.0, 50.0, 7, faults=())
        self.log_bytes = header_line() + format_records(values)
        self.port = broker_port

    def fresh_state(self) -> None:
        """An empty state directory and the log just written, as on a robot's first start."""
        state = self.root / "var" / "lib" / "robotpm-agent"
        subprocess.run(["rm", "-rf", str(state)], check=True)
        state.mkdir(parents=True)
        install.write_atomically(self.logs / "arm1.csv", self.log_bytes)

    def started_agent(self, work: Path) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """RSS of `robotpm-agent run` at READY=1 and after reading the whole log; mappings at READY=1."""
        self.fresh_state()
        notify_path = work / f"notify-{time.monotonic_ns()}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify_path))
        sock.settimeout(1.0)
        with open(work / "agent.out", "ab") as out:
            process = install.start_agent(
                self.agent, self.config, root=self.root, port=self.port, notify=notify_path, out=out
            )
        try:
            if not install.wait_ready(sock, process, 120):
                raise RuntimeError(f"the agent never became ready; see {work / 'agent.out'}")
            ready = status_mib(process.pid)
            mappings = mappings_mib(process.pid)
            deadline = time.monotonic() + 120
            while install.lines_read(self.agent, self.config) < LOG_LINES:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the agent did not read the log; see {work / 'agent.out'}")
                time.sleep(0.2)
            return ready, status_mib(process.pid), mappings
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
            sock.close()
            if process.returncode != 0:
                raise RuntimeError(f"the agent exited {process.returncode}; see {work / 'agent.out'}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="subprocesses per figure (median)")
    parser.add_argument(
        "--venv", type=Path, help="a venv with the wheel and base deps only (default: make one)"
    )
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        if args.venv is None:
            started = time.monotonic()
            python = install.install_venv(work / "opt" / "robotpm", install.build_wheel(work / "wheel"))
            print(f"built the wheel and a base-only venv in {time.monotonic() - started:.0f} s")
        else:
            python = args.venv / "bin" / "python"
        versions = subprocess.run(
            [str(python), "-c", VERSIONS], capture_output=True, text=True, env=install.clean_env(), cwd="/"
        )
        print(versions.stdout.strip())
        broker = Broker(work / "broker").start()
        try:
            robot = Robot(work / "root", python, broker.port)
            bare = [waiting_interpreter(python, "")["VmRSS"] for _ in range(args.repeats)]
            imports = [waiting_interpreter(python, IMPORTS)["VmRSS"] for _ in range(args.repeats)]
            runs = [robot.started_agent(work) for _ in range(args.repeats)]
        finally:
            broker.stop()
        b = median(bare)
        ready = {k: median([r[0][k] for r in runs]) for k in runs[0][0]}
        caught = {k: median([r[1][k] for r in runs]) for k in runs[0][1]}
        table(
            f"Agent RSS on a base-only install (MiB, median of {args.repeats}; bundled model robot-arm@1)",
            ["process", "RSS", "vs bare", "anon", "file", "target", "verdict"],
            [
                ["bare interpreter (baseline)", fmt(b), "", "", "", "", ""],
                [
                    "imports: agent.cli + agent.daemon",
                    fmt(median(imports)),
                    f"+{fmt(median(imports) - b)}",
                    *[""] * 4,
                ],
                *[
                    [
                        label,
                        fmt(got["VmRSS"]),
                        f"+{fmt(got['VmRSS'] - b)}",
                        fmt(got["RssAnon"]),
                        fmt(got["RssFile"]),
                        f"≤ {TARGET_MIB:.0f}",
                        verdict(got["VmRSS"] <= TARGET_MIB),
                    ]
                    for label, got in (
                        ("robotpm-agent run: READY=1", ready),
                        (f"… after reading {LOG_LINES:,} log lines", caught),
                    )
                ],
                ["…   peak (VmHWM)", fmt(caught["VmHWM"]), f"+{fmt(caught['VmHWM'] - b)}", "", "", "", ""],
            ],
            note="anon: heap and Python objects; file: mapped library code and data (shared, reclaimable)",
        )
        mapped = runs[-1][2]
        largest = sorted(mapped.items(), key=lambda item: -item[1])[:12]
        table(
            "Where the started agent's RSS is at READY=1, by mapping (MiB; the last run)",
            ["mapping", "RSS", "share"],
            [
                *[[name, fmt(mib), f"{100 * mib / sum(mapped.values()):.0f}%"] for name, mib in largest],
                ["everything else", fmt(sum(mapped.values()) - sum(m for _, m in largest)), ""],
            ],
            note="a library's RSS is the pages of its code and data touched so far (clean pages are "
            "shared with other processes and reclaimable, but count in RSS)",
        )
        bundled = install.package_dir(python, "agent") / "models" / "bundled"
        steps = subprocess.run(
            [str(python), "-c", BREAKDOWN, str(bundled), *DEPENDENCY_ORDER],
            capture_output=True,
            text=True,
            # what agent.cli sets before onnxruntime starts (imported here before agent.cli)
            env={**install.clean_env(), "ORT_DISABLE_TELEMETRY": "1"},
            cwd="/",
            check=True,
        ).stdout.splitlines()
        table(
            "Where it goes: RSS each import adds, in this order (MiB; one interpreter)",
            ["step", "heap", "anon", "file", "adds", "RSS"],
            [line.split("\t") for line in steps],
            note="each module is charged with what it imports first (paho brings ssl, urllib, email; "
            "structlog asyncio)",
        )
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
