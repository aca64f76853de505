"""Settings shared by the whole suite: small thread counts (CI has 2 cores) and a private cache; the
smoke recipe's one-process run, made once and read by every test that compares against it."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the subprocesses the tests start

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    """Tiny models gain nothing from threads, and CI has two cores shared with subprocesses."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """(output, stats) of the uninterrupted one-process smoke run (tests/smoke.py). Read-only: copy it
    (shutil.copytree) to change it."""
    from smoke import OVERRIDES, SMOKE

    import facesynth

    out = tmp_path_factory.mktemp("smoke") / "out"
    stats = facesynth.run(SMOKE, out=out, overrides=OVERRIDES, progress=False)
    return out, stats


@pytest.fixture(scope="session")
def smoke_tables(smoke_run: tuple[Path, dict]) -> dict[str, object]:
    """Every published table of ``smoke_run`` (tests/outputs.py's ``read_all``)."""
    from outputs import read_all

    return read_all(smoke_run[0])
