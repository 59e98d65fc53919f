"""Run the real agent as a subprocess, as systemd would, for tests that kill, stop and restart it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def spawn_agent(
    config: Path, output: Path, *, preexec_fn: Callable[[], None] | None = None
) -> subprocess.Popen[bytes]:
    """``robotpm-agent run --config config`` in our own interpreter, its output appended to `output`.

    The environment is this one without ``ROBOTPM*`` overrides (the config file alone decides),
    and unbuffered, so the agent's log lines survive a SIGKILL. `preexec_fn` runs in the child
    before the agent starts (e.g. to lower a resource limit).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBOTPM")}
    env["PYTHONUNBUFFERED"] = "1"
    with output.open("ab") as out:  # the child keeps its own copy of the handle
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )


@contextmanager
def reaped(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """`process` for the block; SIGKILLed and waited for on the way out if it is still running."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
