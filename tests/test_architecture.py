"""The house stays as docs/architecture.md draws it: every module in a mapped room, imports one way.

Reads the source with :mod:`ast` (nothing is imported): the room of every module of ``sfsim/`` and
``trainer/`` must be a row of the architecture page's map, the import graph (function-local imports
included) must have no circle, the root of ``sfsim/`` stays small, and long functions stay rare.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sfsim", "trainer")
MAP = (ROOT / "docs" / "architecture.md").read_text()


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the two packages."""
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(root):
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _rooms() -> set[str]:
    """Folders (``sfsim/engine/``) and root modules (``sfsim/units.py``) named in the map's table."""
    return set(re.findall(r"`((?:sfsim|trainer)/[\w/]*?(?:/|\.py))`", MAP))


def test_every_module_lives_in_a_mapped_room():
    rooms = _rooms()
    lost = []
    for path in _modules().values():
        rel = path.relative_to(ROOT).as_posix()
        parts = rel.split("/")
        folders = {"/".join(parts[:i]) + "/" for i in range(2, len(parts))}  # a room's sub-folders are its own
        if rel not in rooms and not folders & rooms:
            lost.append(rel)
    assert not lost, f"modules outside docs/architecture.md's map: {lost}"


def test_no_import_circles():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert _cycles(graph) == []


def test_few_root_modules():
    root = [p for p in (ROOT / "sfsim").glob("*.py")]
    assert len(root) <= 15, sorted(p.name for p in root)


def test_long_functions_are_rare():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{name}.{node.name} ({lines})")
    assert len(long) <= 3, long
