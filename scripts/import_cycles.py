"""Import cycles among a package's modules, counting the imports inside functions too.

    python scripts/import_cycles.py [PACKAGE_DIR …] [--only PREFIX]

Every ``import`` and ``from … import`` in every module under the package folders (default: ``serving``) is an edge,
wherever it is: at the top, inside a function or a method, under ``try``. A lazy import inside a function still runs
when the function does, and a cycle through it is a cycle in the design even when it happens not to fail at import
time. Only imports under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) are left out: they never run.

``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``. Importing ``a.b.c`` also
runs ``a/__init__`` and ``a/b/__init__``: those count as edges too, except the importer's own enclosing packages
(already being imported when the importer runs). Only modules found under the folders are nodes; imports of anything
else (the standard library, NumPy, Ray) are ignored.

Prints each cycle (a strongly connected component of two modules or more, or a module importing itself) with one
import line per edge of a shortest loop through it; ``--only serving.batch`` keeps the cycles that touch modules under
that prefix. Exit status: 0 no cycle, 1 cycles found.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Edge:
    """One import statement from ``source`` to ``target``, where it is written."""

    source: str
    target: str
    line: int
    in_function: bool


def module_name(path: Path, root: Path) -> str:
    """``serving/batch/job.py`` → ``serving.batch.job``; a package's ``__init__.py`` → the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``node``, and whether it is inside a function; ``TYPE_CHECKING`` blocks left out."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:  # the else branch does run
                yield from _imports_of(other, in_function)
            continue
        yield from _imports_of(child, in_function)


def _imports_of(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, in_function
        return
    yield from _imports(node, in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative imports resolved against the importer)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _with_packages(target: str, importer: str) -> list[str]:
    """``target`` and the packages above it whose ``__init__`` runs first, less the importer's own."""
    parts = target.split(".")
    own = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    return [name for i in range(1, len(parts) + 1) if (name := ".".join(parts[:i])) not in own or name == target]


def edges_of(path: Path, name: str, modules: set[str]) -> list[Edge]:
    """The edges from module ``name`` (the file ``path``) to the other modules in ``modules``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: dict[Edge, None] = {}  # one edge per statement and target, in source order
    for node, in_function in _imports(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _resolve(name, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        for target in targets:
            for module in _with_packages(target, name):
                # a module importing itself is listed only when it names itself, not as a package above a target
                if module in modules and (module != name or module == target):
                    found[Edge(name, module, node.lineno, in_function)] = None
    return list(found)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components (iterative: no recursion limit on a large package), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
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
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def shortest_loop(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """A shortest path from ``start`` back to itself inside one component: the cycle to show."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & within):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return [start]


def _shown(path: Path) -> str:
    """A path relative to the working folder where it is under it (clickable in a terminal), else absolute."""
    here = Path.cwd().resolve()
    return str(path.relative_to(here) if path.is_relative_to(here) else path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="*", type=Path, default=[Path("serving")], metavar="PACKAGE_DIR")
    parser.add_argument("--only", default="", metavar="PREFIX", help="report the cycles touching these modules")
    args = parser.parse_args(argv)

    files: dict[str, Path] = {}
    for package in args.packages:
        root = package.resolve().parent
        for path in sorted(package.resolve().rglob("*.py")):
            files[module_name(path, root)] = path
    modules = set(files)
    edges = [edge for name, path in files.items() for edge in edges_of(path, name, modules)]
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for edge in edges:
        graph[edge.source].add(edge.target)

    def touches(component: list[str]) -> bool:
        return not args.only or any(m == args.only or m.startswith(args.only + ".") for m in component)

    cycles = [c for c in strongly_connected(graph)
              if (len(c) > 1 or c[0] in graph[c[0]]) and touches(c)]
    scope = f" touching {args.only}" if args.only else ""
    print(f"{len(modules)} modules, {len(edges)} imports under {', '.join(map(str, args.packages))}: "
          f"{len(cycles)} cycle{'s' if len(cycles) != 1 else ''}{scope}")
    for component in cycles:
        print(f"cycle: {' <-> '.join(component)}")
        loop = shortest_loop(graph, component[0], set(component))
        for source, target in itertools.pairwise(loop):
            for edge in edges:
                if edge.source == source and edge.target == target:
                    where = "inside a function" if edge.in_function else "at module level"
                    print(f"  {_shown(files[source])}:{edge.line}: {source} imports {target} ({where})")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
