"""Fixtures of the core tests: a small smoke output whose units are done, made once, copied to change."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke recipe with ``SMALL`` (tests/smoke.py): every unit done, not finalized. Read-only: copy
    it (shutil.copytree) to change it."""
    from smoke import SMALL, SMOKE

    from facesynth.prepare import prepare
    from facesynth.recipe import load_recipe
    from facesynth.runner import run_units

    out = tmp_path_factory.mktemp("small-units") / "out"
    run = prepare(load_recipe(SMOKE, SMALL), out, progress=False)
    run_units(out, range(run["num_units"]), progress=False)
    return out
