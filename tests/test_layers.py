"""The rooms and what each may touch: `vitonhd_models` is the bottom layer (it imports neither `tasks` nor
`flows`), `tasks` never imports `flows`. Checked on every module's imports, top level and inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"vitonhd_models": ("tasks", "flows"), "tasks": ("flows",)}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


MODULES = [(package, path) for package in FORBIDDEN for path in sorted((ROOT / package).rglob("*.py"))]


@pytest.mark.parametrize("package, path", MODULES, ids=[str(path.relative_to(ROOT)) for _, path in MODULES])
def test_a_module_imports_only_the_layers_below_it(package, path):
    wrong = sorted(name for name in imported_modules(path)
                   if any(name == layer or name.startswith(f"{layer}.") for layer in FORBIDDEN[package]))
    assert not wrong, f"{path.relative_to(ROOT)} ({package}) imports {wrong}"
