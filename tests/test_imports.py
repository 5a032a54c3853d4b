"""The package's imports form no circle: every ``nerfstudio_3dae`` import of every module, at module level or inside a
function, read with ``ast`` (an import deferred into a function still ties the two modules together)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "nerfstudio_3dae"
NAME = PACKAGE.name


def module_names(root: Path = PACKAGE) -> Dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _ancestors(name: str) -> List[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: Path, modules: Set[str]) -> Set[str]:
    """The package's modules that ``name`` (in ``path``) imports anywhere in its code: the named modules, the
    submodules a ``from X import y`` names, and the packages (``__init__``) each passes through that do not hold
    ``name`` itself (those are loaded before it, not by it)."""
    is_package = path.name == "__init__.py"
    targets: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one more level up for each extra dot
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets.add(source)
            targets.update(f"{source}.{alias.name}" for alias in node.names)
    found = set()
    for target in (t for t in targets if t.split(".")[0] == NAME):
        found.update(m for m in [*_ancestors(target), target] if m in modules and m not in _ancestors(name))
    found.discard(name)
    return found


def import_graph(root: Path = PACKAGE) -> Dict[str, Set[str]]:
    files = module_names(root)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected groups of more than one module (Tarjan): each is at least one import circle."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_package_imports_form_no_circle():
    graph = import_graph()
    assert len(graph) > 40 and "nerfstudio_3dae.data.synth.generate" in graph["nerfstudio_3dae.bench.compare"]
    found = circles(graph)
    described = ["; ".join(f"{m} imports {sorted(graph[m] & set(group))}" for m in group) for group in found]
    assert not found, "modules that import each other (the model concern goes with the model, or is passed in):\n" + (
        "\n".join(described))  # fmt: skip


def test_the_walk_sees_function_level_and_relative_imports(tmp_path: Path):
    package = tmp_path / NAME
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import b\n")
    (package / "a.py").write_text(f"def f():\n    from {NAME}.sub.b import g\n")
    (package / "sub" / "b.py").write_text(f"import {NAME}.c\n")
    (package / "c.py").write_text("from .a import f\n")
    graph = import_graph(package)
    assert graph[f"{NAME}.sub"] == {f"{NAME}.sub.b"}
    assert graph[f"{NAME}.a"] == {f"{NAME}.sub", f"{NAME}.sub.b"}, "the package a submodule passes through counts"
    assert circles(graph) == [[f"{NAME}.a", f"{NAME}.c", f"{NAME}.sub", f"{NAME}.sub.b"]]
    (package / "c.py").write_text("")
    assert circles(import_graph(package)) == []
