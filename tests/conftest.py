"""Settings shared by the whole suite: small thread counts (CI has 2 cores) and a private cache."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the subprocesses the tests start

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    """Tiny models gain nothing from threads, and CI has two cores shared with subprocesses."""
    import torch

    torch.set_num_threads(1)
