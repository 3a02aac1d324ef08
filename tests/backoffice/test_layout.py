"""The back office's concepts (its top-level modules and packages) import each other without a cycle, so
each can be read, tested and changed from the bottom up (docs/architecture.md, "Import rules")."""

from __future__ import annotations

import ast
from pathlib import Path

import backoffice

ROOT = Path(backoffice.__file__).parent


def _concept(module: str) -> str | None:
    """``backoffice.deliveries.claim`` -> ``deliveries``; None for the package itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "backoffice" and len(parts) > 1 else None


def _module_level_imports(path: Path) -> set[str]:
    """The backoffice modules a file imports when it is loaded (imports inside functions run later)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "backoffice":
                found.update(f"backoffice.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return {name for name in found if name.startswith("backoffice.")}


def import_graph() -> dict[str, set[str]]:
    """concept -> the other concepts it imports."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = ".".join(("backoffice", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        source = _concept(module)
        if source is None:
            continue
        targets = {_concept(name) for name in _module_level_imports(path)}
        graph.setdefault(source, set()).update(t for t in targets if t is not None and t != source)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one concept (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, set()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            group.append(node)
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_finder_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_concepts_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    assert {"signals", "approvals", "deliveries", "executions", "positions"} <= set(graph)  # it read them
    found = cycles(graph)
    assert not found, "import cycles between concepts: " + "; ".join(
        ", ".join(f"{a} -> {sorted(graph[a] & set(group))}" for a in group) for group in found
    )
