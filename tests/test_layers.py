"""The rooms and what each may touch, checked on every module's imports (top level and inside functions).

Between packages: `vitonhd_models` is the bottom layer (it imports neither `tasks` nor `flows`), `tasks`
never imports `flows`. Inside `tasks/`, each room imports only the rooms below it: infra (storage,
retries, the lease) <- records (configuration, catalog, manifest) <- stages <- engine (the planner, the
shard engine, the Prefect tasks); the separate tools stand on infra, records and stages, never the engine.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"vitonhd_models": ("tasks", "flows"), "tasks": ("flows",)}
TASK_ROOMS_BELOW = {
    "infra": (),
    "records": ("infra",),
    "stages": ("infra", "records"),
    "engine": ("infra", "records", "stages"),
    "tools": ("infra", "records", "stages"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


MODULES = [(package, path) for package in FORBIDDEN for path in sorted((ROOT / package).rglob("*.py"))]
TASK_MODULES = sorted((ROOT / "tasks").rglob("*.py"))


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
