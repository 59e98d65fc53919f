"""A robot install made the README's way: the wheel built from this tree, in a fresh venv, base deps only.

Used by tests/test_install.py and bench/bench_memory.py. The source tree is copied first (the
files git tracks or would track), so building never writes into the working tree.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent


def _run(command: list[str | Path], *, cwd: Path | None = None, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def build_wheel(work: Path) -> Path:
    """``python -m build`` (sdist, then the wheel from it) on a copy of this tree; the wheel's path."""
    source = work / "source"
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = work / "dist"
    _run([sys.executable, "-m", "build", "--outdir", dist, source])
    (wheel,) = dist.glob("robotpm-*.whl")
    return wheel


def install_venv(venv: Path, wheel: Path) -> Path:
    """A fresh venv at `venv` with `wheel` and its base dependencies only; its python."""
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel])
    return python


def clean_env() -> dict[str, str]:
    """The environment minus what would let the installed agent see the source tree or overrides."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ROBOTPM", "PYTHON", "COVERAGE", "VIRTUAL_ENV")) and k != "NOTIFY_SOCKET"
    }


def package_dir(python: Path, package: str) -> Path:
    """Where `python` finds `package`'s files (importlib.resources), run outside the source tree."""
    code = f"import importlib.resources as r; print(r.files({package!r}))"
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env=clean_env(), cwd="/", check=True
    )
    return Path(done.stdout.strip())


def configure_template(template: str, root: Path) -> str:
    """The config template as an integrator edits it: its paths under `root`, the MQTT credential on."""
    text = template
    for prefix in ("/var/lib/", "/var/log/", "/etc/robotpm/", "/run/credentials/"):
        text = text.replace(f'"{prefix}', f'"{root}{prefix}')
    uncommented = text.replace("# credentials_file = ", "credentials_file = ")
    if uncommented == text:
        raise ValueError("the config template no longer offers credentials_file")
    return uncommented


def write_atomically(path: Path, data: bytes) -> None:
    """Write beside `path`'s directory, then rename: a follower sees the file appear whole."""
    staging = path.parent.parent / f".{path.name}.part"
    staging.write_bytes(data)
    os.replace(staging, path)


def start_agent(
    agent: Path, config: Path, *, root: Path, port: int, notify: Path, out: IO[bytes]
) -> subprocess.Popen[bytes]:
    """``robotpm-agent run --profile prod`` as the unit starts it, under a fake systemd's `notify` socket."""
    env = {**clean_env(), "NOTIFY_SOCKET": str(notify), "ROBOTPM__AGENT__MQTT__PORT": str(port)}
    return subprocess.Popen(
        [str(agent), "run", "--config", str(config), "--profile", "prod"],
        env=env,
        cwd=root,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_ready(notify: socket.socket, process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Whether READY=1 arrives on `notify` (a socket with a timeout) while `process` runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if b"READY=1" in notify.recv(4096):
                return True
        except TimeoutError:
            continue
    return False


def samples_seen(agent: Path, config: Path, stream: str = "arm1") -> int:
    """Records of `stream` the agent has committed, as ``robotpm-agent status`` shows them."""
    done = subprocess.run(
        [str(agent), "status", "--config", str(config)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith(f"stream {stream}:") and "samples " in line:
            return int(line.split("samples ")[1].split(",")[0])
    return 0
