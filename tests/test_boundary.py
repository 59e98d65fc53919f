"""The agent ships to robots: importing it must never pull in the trainer or heavy ML libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("sklearn", "skl2onnx", "pandas", "matplotlib", "trainer", "onnx")

AGENT_MODULES = (
    "agent",
    "agent.contract",
    "agent.config",
    "agent.cli",
    "agent.daemon",
    "agent.models.scorer",
    "agent.models.slot",
    "agent.models.verify",
    "agent.streams.pipeline",
)


@pytest.mark.parametrize("module", AGENT_MODULES)
def test_importing_agent_module_never_imports_trainer_or_ml_stacks(module: str) -> None:
    """A fresh interpreter that imports an agent module has none of the forbidden packages loaded."""
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_base_distribution_requires_no_trainer_dependencies() -> None:
    """The base install (what a robot gets) lists no scikit-learn, pandas or plotting library."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    names = {
        dep.split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip().lower()
        for dep in project["dependencies"]
    }
    assert names.isdisjoint({"scikit-learn", "sklearn", "pandas", "matplotlib", "skl2onnx", "onnx"})
    assert {"numpy", "onnxruntime", "paho-mqtt", "watchdog", "pydantic", "structlog", "cryptography"} <= names
