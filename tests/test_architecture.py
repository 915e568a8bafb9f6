"""The layout's rules (docs/design.md §2): imports run one way, with no cycle, and no module
imports a ``_private`` name from another package.

Every import counts, those inside functions too (a deferred import that dodges a cycle is still
a cycle in the design); only ``if TYPE_CHECKING:`` blocks are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package name it is installed as (pyproject.toml's package-dir).
PACKAGES = {"massedit": "massedit", "algorithms": "massedit.algorithms",
            "distribution": "massedit.distribution", "evals": "massedit.evals"}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """All nodes except the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if (isinstance(child, ast.If) and isinstance(child.test, ast.Name)
                    and child.test.id == "TYPE_CHECKING"):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> modules it imports (project modules only), and private cross-package imports."""
    modules = _modules()

    def owner(name: str) -> str | None:  # the project module a dotted name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def package(module: str) -> str:  # massedit.<family> (a sub-package or a top module)
        return ".".join(module.split(".")[:2])

    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for module, path in modules.items():
        for node in _runtime_nodes(ast.parse(path.read_text())):
            names: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                names = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:  # relative: from .scoring import x inside massedit.evals
                    parent = module if path.name == "__init__.py" else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        parent = parent.rpartition(".")[0]
                    base = f"{parent}.{node.module}"
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    names.append((full if full in modules else base, alias.name))
            for name, attr in names:
                target = owner(name) if name.startswith("massedit") else None
                if target is None or target == module:
                    continue
                graph[module].add(target)
                if (attr and attr.startswith("_") and not attr.startswith("__")
                        and package(target) != package(module)):
                    private.append(f"{module} imports {attr} from {target}")
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    graph, _ = import_graph()
    assert len(graph) > 100  # the walk found the project, not an empty folder
    assert cycles(graph) == []


def test_no_private_names_across_packages():
    _, private = import_graph()
    assert private == []


def test_the_checks_can_fail():
    """The detectors themselves: a planted cycle and a planted private import are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("lower, upper", [
    ("massedit.engine", "massedit.editing"), ("massedit.engine", "massedit.jobs"),
    ("massedit.engine", "massedit.cli"), ("massedit.models", "massedit.engine"),
    ("massedit.stats", "massedit.editing"), ("massedit.targets", "massedit.editing"),
    ("massedit.editing", "massedit.jobs"), ("massedit.editing", "massedit.cli"),
    ("massedit.jobs", "massedit.cli"), ("massedit.algorithms", "massedit.editing"),
])
def test_imports_run_downwards(lower, upper):
    """The layers of docs/design.md §2: a lower part never imports a higher one."""
    graph, _ = import_graph()
    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() if m.startswith(lower)
                   for t in targets if t.startswith(upper))
    assert wrong == []
