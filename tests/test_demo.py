"""The README's demo: a simulated robot develops a fault and the alert reaches an MQTT subscriber."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.mosquitto import free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("broker_kind", ["embedded", "mosquitto"])
def test_the_demo_shows_a_raised_alert_with_its_explanation(tmp_path: Path, broker_kind: str) -> None:
    """With no broker at the given address the demo starts its own, and an explained alert arrives."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "robotpm_sim.demo",
            "--workdir",
            str(tmp_path / "demo"),
            "--broker",
            f"127.0.0.1:{free_port()}",
            "--broker-kind",
            broker_kind,
            "--fault-after-s",
            "3",
            "--stop-after-raise",
            "--timeout-s",
            "90",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert 0 == result.returncode, result.stdout[-2000:] + result.stderr[-2000:]
    raised = [line for line in result.stdout.splitlines() if "ALERT raised" in line]
    assert raised, result.stdout
    assert "bearing_wear" in raised[0]
    assert "why: " in raised[0]
    assert "presence: sim-robot-1 is online" in result.stdout
