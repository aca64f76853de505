"""Session fixtures of the scale-out tests: the one-process reference run every other run must equal
(the suite's shared smoke run, tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def reference(smoke_run: tuple[Path, dict]) -> Path:
    """The uninterrupted one-process run (one torch thread, as tests/conftest.py sets)."""
    return smoke_run[0]


@pytest.fixture(scope="session")
def reference_tables(smoke_tables: dict[str, object]) -> dict[str, object]:
    return smoke_tables
