"""The package's modules import each other without cycles, and ``locking``
never imports ``versioning``.

Every import counts, also one inside a function (a lazy import only hides a
cycle) — except imports under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "chrononaut"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules imported by ``path`` (``from pkg import submodule`` included)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names if alias.name in modules)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module in modules:
                    found.add(child.module)
                for alias in child.names:
                    candidate = f"{child.module}.{alias.name}"
                    if candidate in modules:
                        found.add(candidate)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {name: _imports(path, modules) - {name} for name, path in paths.items()}
    # Importing a package's submodule runs the package's __init__ first: an edge to
    # a.b.c is also an edge to a.b. Edges into our own parent packages are not
    # cycles of this module's making, so they are left out.
    for name, targets in graph.items():
        for target in list(targets):
            parts = target.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if parent in modules and not name.startswith(parent + ".") and parent != name:
                    targets.add(parent)
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                strongconnect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return components


def test_no_import_cycles() -> None:
    """No two modules of the package import each other, directly or through others."""
    assert _cycles(_graph()) == []


def test_locking_does_not_import_versioning() -> None:
    """``chrononaut.locking`` builds on nothing of ``chrononaut.versioning``."""
    graph = _graph()
    offenders = {
        name: sorted(t for t in targets if t.startswith("chrononaut.versioning"))
        for name, targets in graph.items()
        if name.startswith("chrononaut.locking")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_locking_reads_no_flask_sqlalchemy_privates() -> None:
    """``chrononaut.locking`` finds the app's database through ``chrononaut._app`` only."""
    private = ("__fsa__", 'extensions["sqlalchemy"]', 'extensions.get("sqlalchemy"')
    found = {
        path.name: [text for text in private if text in path.read_text(encoding="utf-8")]
        for path in (PACKAGE / "locking").glob("*.py")
    }
    assert {name: texts for name, texts in found.items() if texts} == {}
