"""The rooms and what each may touch, checked on every module's imports (top level and inside functions).

Between packages: `vitonhd_models` is the bottom layer (it imports neither `tasks` nor `flows`), `tasks`
never imports `flows`. Inside `tasks/`, each room imports only the rooms below it: infra (storage,
retries, the lease) <- records (configuration, catalog, manifest) <- stages <- engine (the planner, the
shard engine, the Prefect tasks); the separate tools stand on infra, records and stages, never the engine.
And no module of the three packages imports itself back through others (an import circle), counting
every import: top level, inside functions and under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vitonhd_models", "tasks", "flows")
FORBIDDEN = {"vitonhd_models": ("tasks", "flows"), "tasks": ("flows",)}
TASK_ROOMS_BELOW = {
    "infra": (),
    "records": ("infra",),
    "stages": ("infra", "records"),
    "engine": ("infra", "records", "stages"),
    "tools": ("infra", "records", "stages"),
}


def module_name(relative: Path) -> str:
    """`tasks/engine/plan.py` -> `tasks.engine.plan`; a package's `__init__.py` is the package."""
    parts = relative.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(name: str, source: str, is_package: bool, modules: Iterable[str]) -> set[str]:
    """The modules of `modules` that module `name` imports, anywhere in it. `import a.b` imports a.b;
    `from a import b` imports a.b when that is a module, else a (b is a name a defines); a relative import
    is resolved from `name`'s package. The packages above an imported module are not counted, though Python
    runs their `__init__` first: an `__init__` that imports its submodules inside functions only (`flows.cli`'s)
    would otherwise put every submodule importing a sibling in a false circle."""
    modules = set(modules)
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                above = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*above, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.name`-like leftovers: the module holding it
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Every module of the three packages -> the modules of the three it imports."""
    paths = {module_name(path.relative_to(ROOT)): path for package in PACKAGES
             for path in sorted((ROOT / package).rglob("*.py"))}
    return {name: imports_of(name, path.read_text(), path.name == "__init__.py", paths)
            for name, path in paths.items()}


def shortest_circle(graph: Mapping[str, set[str]], group: set[str]) -> list[str]:
    """The shortest circle through the group's first module, breadth first inside the group."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        step = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    step.append(nxt)
        frontier = step
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One circle per group of modules that reach each other (strongly connected), the shortest through the
    group's first module, as [a, b, ..., a]; sorted, so a failure reads the same every run."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(shortest_circle(graph, group) for group in groups)


GRAPH = import_graph()
MODULES = [(package, path) for package in FORBIDDEN for path in sorted((ROOT / package).rglob("*.py"))]
TASK_MODULES = sorted((ROOT / "tasks").rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    return GRAPH[module_name(path.relative_to(ROOT))]


@pytest.mark.parametrize("package, path", MODULES, ids=[str(path.relative_to(ROOT)) for _, path in MODULES])
def test_a_module_imports_only_the_layers_below_it(package, path):
    wrong = sorted(name for name in imported_modules(path)
                   if any(name == layer or name.startswith(f"{layer}.") for layer in FORBIDDEN[package]))
    assert not wrong, f"{path.relative_to(ROOT)} ({package}) imports {wrong}"


def test_every_task_module_lives_in_a_room():
    loose = [path.name for path in (ROOT / "tasks").glob("*.py") if path.name != "__init__.py"]
    rooms = {path.name for path in (ROOT / "tasks").iterdir() if (path / "__init__.py").exists()}
    assert not loose, f"modules outside a room in tasks/: {loose}"
    assert rooms == set(TASK_ROOMS_BELOW), f"tasks/ rooms {sorted(rooms)} differ from {sorted(TASK_ROOMS_BELOW)}"


@pytest.mark.parametrize("path", TASK_MODULES, ids=[str(path.relative_to(ROOT)) for path in TASK_MODULES])
def test_a_task_room_imports_only_the_rooms_below_it(path):
    room = path.relative_to(ROOT / "tasks").parts[0]
    if room == "__init__.py":
        return
    allowed = {room, *TASK_ROOMS_BELOW[room]}
    wrong = sorted(name for name in imported_modules(path)
                   if name.startswith("tasks.") and name.split(".")[1] not in allowed)
    assert not wrong, f"{path.relative_to(ROOT)} ({room}) imports {wrong}; it may use {sorted(allowed)}"


def test_no_module_imports_itself_back():
    circles = import_cycles(GRAPH)
    assert not circles, "import circles (each module imports the next):\n" + "\n".join(
        " -> ".join(circle) for circle in circles)


def test_every_kind_of_import_counts():
    source = """
import pkg.a
from pkg import b, helper
from . import c
from .sub import d
from .. import up
if TYPE_CHECKING:
    from pkg.e import Name
def later():
    from pkg.f.deep import thing
"""
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.sub", "pkg.sub.d", "pkg.e", "pkg.f", "pkg.me", "top", "top.up"}
    assert imports_of("pkg.me", source.replace("..", "."), False, modules) == {
        "pkg.a", "pkg.b", "pkg", "pkg.c", "pkg.sub.d", "pkg.e", "pkg.f"}
    assert "top.up" in imports_of("top.pkg.me", "from .. import up", False, modules)


def test_a_circle_is_reported_and_a_package_init_makes_none():
    graph = {"pkg": set(), "pkg.a": {"pkg", "pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a", "pkg"}, "pkg.d": {"pkg.a"}}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
