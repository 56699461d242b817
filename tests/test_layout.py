"""The layout rules of docs/architecture.md, checked on the source tree so they cannot drift.

* Layers: ``engine/`` imports nothing of ours; ``adapters/`` imports only ``engine/``; ``actors/`` imports
  ``engine/`` and ``adapters/``; ``node/`` may import all three; only the entry point, the test kit and the
  benchmarks build the node (``EngineSystem``).
* No import cycle among the project's modules (every import statement counts: ``TYPE_CHECKING`` ones too).
* Paper-vs-real differences stay behind the adapter interface: no ``kind == "paper"`` outside ``adapters/``.
* Modules stay readable: none past 450 lines (the convention is ~400).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "actors", "adapters", "node")
ALLOWED = {
    "engine": {"engine"},
    "adapters": {"engine", "adapters"},
    "actors": {"engine", "adapters", "actors"},
    "node": {"engine", "adapters", "actors", "node"},
}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts)
            mods[name.removesuffix(".__init__")] = path
    mods["run_engine"] = ROOT / "run_engine.py"
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> Iterator[str]:
    """Every project module ``module`` imports (absolute or relative; anywhere in the file)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                up = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            resolved = _resolve(target)
            if resolved is not None and resolved != module:
                yield resolved


GRAPH = {module: set(_imports(module, path)) for module, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative enough for this size)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle() -> None:
    assert _cycles() == []


@pytest.mark.parametrize("package", PACKAGES)
def test_layers_import_only_what_they_may(package: str) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] not in ALLOWED[package]
    )
    assert wrong == []


def test_only_the_entry_point_builds_the_node() -> None:
    importers = sorted(module for module, targets in GRAPH.items() if "node.system" in targets)
    assert importers == ["run_engine"]


def test_no_paper_checks_outside_the_adapters() -> None:
    paper_check = re.compile(r"""kind\s*[!=]=\s*["']paper["']""")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for module, path in MODULES.items()
        if not module.startswith("adapters")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if paper_check.search(line)
    ]
    assert offenders == []


def test_modules_stay_readable() -> None:
    long = {
        str(path.relative_to(ROOT)): count
        for path in MODULES.values()
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_checks_see_the_tree() -> None:
    """Guards the guards: the graph really holds the project's imports (a broken walk would pass vacuously)."""
    assert len(MODULES) > 60
    assert "engine.messages" in GRAPH["actors.router"]
    assert "node.system" in GRAPH["run_engine"]
