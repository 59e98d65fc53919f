"""The agent ships to robots: importing it must never pull in the trainer or heavy ML libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def _module_level_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Which module imports which, among `packages`, from the imports run at import or type-check time.

    Imports inside a function are left out (they run later, by design, to break a load
    order); those at module level, under ``if TYPE_CHECKING:`` included, count.
    """
    import ast

    files = {
        path: path.relative_to(root).with_suffix("") for p in packages for path in (root / p).rglob("*.py")
    }
    names = {
        path: ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts) for path, rel in files.items()
    }
    known = set(names.values())
    graph: dict[str, set[str]] = {}
    for path, module in names.items():
        edges: set[str] = set()
        todo = list(ast.parse(path.read_text(encoding="utf-8")).body)
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    edges.add(sub if sub in known else node.module)
            todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
        graph[module] = {e for e in edges if e in known and e != module}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that reach each other through imports (Tarjan's strongly connected parts)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: list[str] = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_modules_of_the_agent_trainer_or_simulator_import_each_other_in_a_circle() -> None:
    """Every package reads from the bottom up: no module-level import circle, type-only ones included."""
    root = Path(__file__).parent.parent
    assert [] == _circles(_module_level_graph(root, ("agent", "trainer", "robotpm_sim")))


def test_an_import_circle_closed_under_type_checking_is_found_and_one_inside_a_function_is_not(
    tmp_path: Path,
) -> None:
    """The guard sees a circle closed by a type-only import (as rotation <-> tracked once was)."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "x.py").write_text("from pkg.y import Y\n")
    (package / "y.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.x import X\nY = 1\n"
    )
    (package / "z.py").write_text("from pkg.x import X\n")
    (package / "w.py").write_text("from pkg import z\n")
    (package / "v.py").write_text("def later():\n    from pkg.w import W\n")
    graph = _module_level_graph(tmp_path, ("pkg",))
    assert graph["pkg.w"] == {"pkg.z"}
    assert graph["pkg.v"] == set()
    assert _circles(graph) == [["pkg.x", "pkg.y"]]
