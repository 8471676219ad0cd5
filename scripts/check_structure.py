#!/usr/bin/env python3
"""Check the structural rules of src/qkdtwin (docs/architecture.md, "Module map"):

- no import cycle between modules, counting every import (module level and inside functions);
- no module over 600 lines;
- no function or method over 80 lines;
- the runtime backends are named (``"clab"``) only inside runtime/.

Run from the repository root: ``python scripts/check_structure.py`` (exit 1 and a list of the
violations when a rule is broken; ``--graph`` also prints the import graph).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "qkdtwin"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Project modules imported anywhere in a file (a name imported from a package counts as
    its submodule when there is one)."""
    current = module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(current, path.name == "__init__.py", node)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != current:
                found.add(name)
    return found


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}() is {n} lines")
    return out


def check(show_graph: bool = False) -> list[str]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    graph = nx.DiGraph()
    problems: list[str] = []
    for path in files:
        graph.add_node(module_name(path))
        for target in imports_of(path, modules):
            graph.add_edge(module_name(path), target)
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            problems.append(f"{path.relative_to(ROOT)} is {lines} lines")
        problems += long_functions(path)
        if "runtime" not in path.relative_to(PACKAGE).parts[:1] and '"clab"' in path.read_text():
            problems.append(f'{path.relative_to(ROOT)} names the "clab" backend')
    # a package imports its own submodules to re-export them: that is not a cycle
    for a, b in list(graph.edges):
        if b.startswith(a + "."):
            graph.remove_edge(a, b)
    for scc in nx.strongly_connected_components(graph):
        if len(scc) > 1:
            cycle = nx.find_cycle(graph.subgraph(scc))
            problems.append("import cycle: " + " -> ".join([e[0] for e in cycle] + [cycle[0][0]]))
    if show_graph:
        for a in sorted(graph):
            print(a, "->", ", ".join(sorted(graph.successors(a))) or "-")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graph", action="store_true", help="print the import graph too")
    problems = check(p.parse_args().graph)
    for line in problems:
        print(line)
    print(f"structure: {len(problems)} problem(s)" if problems else "structure: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
