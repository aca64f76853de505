"""Data flows one way: identity/ and filters/ share face models through facesynth.faces, never each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """Every module each file under ``folder`` imports (also inside functions)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("identity", ("facesynth.filters",)),
        ("filters", ("facesynth.identity",)),
        ("facesynth/faces", ("facesynth.identity", "facesynth.filters", "facesynth.generators")),
    ],
)
def test_stages_do_not_import_each_other(folder, forbidden):
    bad = {
        path: sorted(m for m in modules if m.startswith(forbidden))
        for path, modules in imported_modules(ROOT / folder).items()
    }
    assert not {path: mods for path, mods in bad.items() if mods}
