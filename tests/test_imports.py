"""The package's import graph has no cycle at run time.

Every ``import`` inside ``asgi_micro/`` counts, at module level or inside a function (a
function-level import only hides a cycle until that function runs); imports under
``if TYPE_CHECKING:`` do not, since they never run. Importing ``a.b.c`` runs ``a.b`` first,
so an import also leads to the packages on its way, except those the importer sits in.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import asgi_micro

PACKAGE = Path(asgi_micro.__file__).parent
ROOT = PACKAGE.name


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that runs, at any depth."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            for statement in node.orelse:
                yield from _imports(ast.Module(body=[statement], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def reach(target: str, importer: str = name) -> None:
            parts = target.split(".")
            for end in range(2, len(parts) + 1):
                step = ".".join(parts[:end])
                inside = importer == step or importer.startswith(step + ".")
                if step in known and not inside:
                    graph[importer].add(step)

        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(ROOT):
                        reach(alias.name)
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            if not source.startswith(ROOT):
                continue
            reach(source)
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    reach(f"{source}.{alias.name}")
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_at_run_time() -> None:
    assert cycles(import_graph()) == []


def test_the_checker_finds_cycles_through_functions_and_packages() -> None:
    graph = {
        "asgi_micro.a": {"asgi_micro.b"},
        "asgi_micro.b": {"asgi_micro.c"},
        "asgi_micro.c": {"asgi_micro.a"},
        "asgi_micro.d": set(),
    }
    assert cycles(graph) == [["asgi_micro.a", "asgi_micro.b", "asgi_micro.c"]]


def test_the_graph_counts_function_level_imports_and_skips_type_checking() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .service import Service\n"
        "def later():\n    from .codec import JSON\n"
    )
    tree = ast.parse(source)
    found = [node.module for node in _imports(tree) if isinstance(node, ast.ImportFrom)]
    assert found == ["typing", "codec"]
