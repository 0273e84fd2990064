"""The package's import graph has no cycles, lazy and TYPE_CHECKING imports included.
(That the client stays light is tests/test_client.py's.)"""

from __future__ import annotations

import ast
from pathlib import Path

import tokend

PACKAGE = Path(tokend.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every tokend module -> the tokend modules it imports anywhere in its body."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                # the longest tokend module the import names
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    # a package's __init__ is imported by its submodules implicitly: not an edge
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_import_graph_is_acyclic() -> None:
    graph = import_graph()
    assert "tokend.server" in graph and graph["tokend.daemon"], "the walk found the package"
    # The package's face (tokend/__init__.py) re-exports the client: importing a
    # submodule runs it first, so it may import only what imports nothing back.
    cycle = find_cycle({k: v - {"tokend"} for k, v in graph.items() if k != "tokend"})
    assert not cycle, " -> ".join(cycle)


def test_the_walk_sees_lazy_and_type_checking_imports() -> None:
    graph = {"a": {"b"}, "b": {"a"}}
    assert find_cycle(graph) == ["a", "b", "a"]
    assert "tokend.sinks" in import_graph()["tokend.refresher"]


def test_the_daemon_starts_without_prometheus_client_or_platformdirs() -> None:
    """What the daemon imports before it serves: prometheus_client loads at the first
    scrape of /metrics, platformdirs never (tokend.paths computes the same places)."""
    import subprocess
    import sys

    probe = (
        "import sys, tokend.daemon, tokend.cli\n"
        "print(sorted(m for m in ('prometheus_client', 'platformdirs') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
