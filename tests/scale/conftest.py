"""Session fixtures of the scale-out tests: the one-process reference run every other run must equal."""

from __future__ import annotations

from pathlib import Path

import pytest
from outputs import read_all
from scale_helpers import OVERRIDES, SMOKE

import facesynth


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted one-process run (one torch thread, as tests/conftest.py sets)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    facesynth.run(SMOKE, out=out, overrides=OVERRIDES, progress=False)
    return out


@pytest.fixture(scope="session")
def reference_tables(reference: Path) -> dict[str, object]:
    return read_all(reference)
