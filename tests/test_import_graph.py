"""The import graph of the project's own modules (issue 14): no cycles at module level, and the
quantized core and the models stay single-device PyTorch, free of the orchestration edges.

Imports are read with :mod:`ast` from the files, so the check needs no import of the modules
themselves. Only module-level imports count (a function-level import is a deliberate lazy edge);
imports under ``if TYPE_CHECKING:`` are left out, as they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "trainables", "search_spaces", "benchmarks")
# the quantized core and the models: what a researcher copies into their own training code
CORE = ("trainables.quant", "trainables.models")
EDGES = ("orchestrator", "ray", "mlflow", "optuna", "torch.distributed")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(path: Path, module: str) -> set[str]:
    """Absolute names imported at module level by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and not _is_type_checking(node):
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                stack.extend(handler.body)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = _top_level_imports(path, name)
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_the_project() -> None:
    graph = _graph()
    assert len(graph) > 60 and "orchestrator.cli" in graph and "trainables.quant" in graph
    # a known edge, so that an empty graph cannot pass the cycle check
    assert any(dep.startswith("trainables.") for dep in graph["trainables.loop"])


def test_no_import_cycles_among_project_modules() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    "module", sorted(m for m in _modules() if m.startswith(CORE)), ids=lambda m: m
)
def test_the_core_imports_no_orchestration_edge(module: str) -> None:
    """Module-level and function-level imports alike: the core never reaches the edges."""
    path = _modules()[module]
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module)
    offending = sorted(m for m in imported if m.split(".")[0] in EDGES or m.startswith(EDGES))
    assert not offending, f"{module} imports {offending}"


def test_every_project_module_imports() -> None:
    """A name moved between modules (a split) breaks its importers only when they import: import
    every module once, in a fresh interpreter so that no test's imports hide a missing name."""
    import subprocess
    import sys

    code = (
        "import importlib, sys\n"
        f"for name in {sorted(_modules())!r}:\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
