"""The tree shows the architecture: awqd's packages import one way, so the package import graph has no cycle, and
only the server imports grpc.

A package is awqd/<name>/ or a top-level module awqd/<name>.py. Every import counts, a deferred one inside a
function too: deferring an import hides a cycle from the interpreter, not from a reader.
"""

import ast
from collections import defaultdict
from pathlib import Path

import grpc

from awqd.errors import Status

ROOT = Path(__file__).resolve().parent.parent / "awqd"


def part(module: str) -> str | None:
    """awqd.engine.layers.norm -> engine; awqd.daemon -> daemon; awqd itself and other projects -> None."""
    names = module.split(".")
    return names[1] if names[0] == "awqd" and len(names) > 1 else None


def imported_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module == "awqd":  # from awqd import labels: the names are the modules
            return [f"awqd.{alias.name}" for alias in node.names]
        return [node.module]
    return []


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        importer = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for module in imported_modules(node):
                imported = part(module)
                if imported is not None and imported != importer and imported != "__init__":
                    graph[importer].add(imported)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as [a, b, ..., a], or [] when there is none (depth-first, colouring the path)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_package_import_graph_has_no_cycle():
    graph = package_graph()
    assert {"server", "daemon", "engine", "kernels", "hosting"} <= set(graph), sorted(graph)
    assert find_cycle(graph) == [], "packages import each other: " + " -> ".join(find_cycle(graph))


def test_only_the_server_imports_grpc():
    """Errors carry their status by name (awqd.errors.Status); the server's interceptor maps it to grpc's code."""
    importers = {
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if any(module.split(".")[0] == "grpc" for module in imported_modules(node))
    }
    assert importers and all(path.startswith("server/") for path in importers), sorted(importers)
    assert {status.name for status in Status} <= set(grpc.StatusCode.__members__)


def test_a_cycle_is_found_and_named():
    assert find_cycle({"engine": {"models"}, "models": {"quant", "engine"}, "quant": set()}) == [
        "engine",
        "models",
        "engine",
    ]
    assert find_cycle({"server": {"daemon"}, "daemon": {"engine"}}) == []
