"""agent/ has no import cycle: every import counts, at module level, inside functions (a lazy
import that dodges a cycle is still one) and under ``TYPE_CHECKING`` (a type-only import
back up is a cycle in the design)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module and package under ``agent/``."""
    out = {}
    for f in sorted((root / "agent").rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that importing ``name`` runs: every import statement in its
    file, the packages on the way to each target included (their ``__init__`` runs)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for a in node.names:  # `from pkg import mod` imports the submodule
                sub = f"{base}.{a.name}"
                targets.append(sub if sub in known else base)
    out = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            m = ".".join(parts[:i])
            # a module's own packages are being imported already: not an edge back
            if m in known and not (name == m or name.startswith(m + ".")):
                out.add(m)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: _imported(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and modules
    that import themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_lazy_and_a_type_only_cycle(tmp_path):
    pkg = tmp_path / "agent"
    (pkg / "runtime").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "runtime" / "__init__.py").write_text("")
    (pkg / "runtime" / "a.py").write_text("from agent.runtime import b\n")
    (pkg / "runtime" / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "runtime" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agent.runtime.d import D\n"
    )
    (pkg / "runtime" / "d.py").write_text("import agent.runtime.c\n")
    (pkg / "runtime" / "e.py").write_text("from agent.runtime.a import x\n")
    graph = import_graph(tmp_path)
    assert graph["agent.runtime.b"] == {"agent.runtime.a"}
    assert cycles(graph) == [
        ["agent.runtime.a", "agent.runtime.b"],
        ["agent.runtime.c", "agent.runtime.d"],
    ]


def test_agent_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 80 and "agent.runtime.unit" in graph  # the walk saw the package
    assert "agent.runtime.view" in graph["agent.runtime.metrics"]  # and type-only imports
    assert cycles(graph) == []
