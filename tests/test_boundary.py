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
    assert {"numpy", "onnxruntime", "paho-mqtt", "pydantic", "structlog", "cryptography"} <= names


def _imported_modules(package: str) -> dict[str, set[str]]:
    """Every module each source file of `package` imports (absolute names), read from its AST."""
    import ast
    from pathlib import Path

    root = Path(__file__).parent.parent
    found: dict[str, set[str]] = {}
    for path in sorted((root / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(root))] = names
    return found


def _outside(imports: dict[str, set[str]], top: str, allowed: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{file}: {name}"
        for file, names in imports.items()
        for name in names
        if name.split(".")[0] == top and not any(name == a or name.startswith(a + ".") for a in allowed)
    )


def test_the_trainer_reaches_the_agent_only_through_the_contract() -> None:
    """No trainer module imports an agent module outside `agent.contract`."""
    assert [] == _outside(_imported_modules("trainer"), "agent", ("agent.contract",))


def test_the_contract_is_self_contained() -> None:
    """`agent.contract` imports nothing of the agent outside itself (the trainer depends on it alone)."""
    assert [] == _outside(_imported_modules("agent/contract"), "agent", ("agent.contract",))


def test_the_agent_never_imports_the_trainer_or_the_simulator() -> None:
    """No agent module names the trainer or the simulator package, even inside a function."""
    imports = _imported_modules("agent")
    assert [] == _outside(imports, "trainer", ()) + _outside(imports, "robotpm_sim", ())


def test_the_daemon_never_imports_the_subscriber_tool() -> None:
    """The operators' subscriber tool (`agent.subscriber`) is not part of what runs on the robot."""
    imports = {f: n for f, n in _imported_modules("agent").items() if not f.startswith("agent/subscriber/")}
    assert [] == sorted(f"{f}: {n}" for f, names in imports.items() for n in names if "subscriber" in n)
