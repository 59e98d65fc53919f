"""A real Mosquitto broker for tests: started on a free loopback port, stoppable and restartable."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    """Block until a TCP connect to host:port succeeds."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.02)


@dataclass
class Broker:
    """One mosquitto process that the test controls; only this process is ever signalled."""

    workdir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self) -> Broker:
        """Start (or restart) the broker on the same port and wait until it accepts connections."""
        if MOSQUITTO is None:
            raise RuntimeError("the mosquitto binary is not installed (CI installs it with apt-get)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            # mosquitto started as root drops to user "mosquitto", which cannot write the test's
            # directory: it would then persist nothing, silently (docs/design.md, known pitfalls).
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"persistence true\npersistence_location {self.workdir}/\nautosave_interval 1\n"
            f"log_dest file {self.log_path}\nlog_type error\nlog_type warning\nlog_type notice\n"
            f"{self.extra_config}\n"
        )
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM saves its state; SIGKILL simulates a crash)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        with contextlib.suppress(Exception):
            if proc.stderr is not None:
                proc.stderr.close()

    def kill(self) -> None:
        """Stop the broker with SIGKILL."""
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


def require_mosquitto() -> str:
    """The mosquitto path; fail (never skip) when it is missing, since CI must run these tests."""
    if MOSQUITTO is None:
        raise RuntimeError("mosquitto is not installed: run .ci/run or apt-get install mosquitto")
    return MOSQUITTO
