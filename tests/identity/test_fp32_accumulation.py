"""The bfloat16 screens accumulate in float32, as their error bound assumes, on CUDA too.

torch lets cuBLAS reduce bfloat16 products in reduced precision by default
(``torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction``); every screen turns that
off while it runs and restores the setting after.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from facesynth.faces.gallery import Gallery
from facesynth.identity.bank import select_separated
from facesynth.separation import (
    Screen,
    fp32_accumulation,
    nearest_neighbours,
    row_norms64,
    screen_margin,
)

matmul = torch.backends.cuda.matmul


@pytest.fixture
def reduced_precision_allowed():
    """torch's CUDA default (True), whatever an earlier test left, restored afterwards."""
    before = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = True
    yield
    matmul.allow_bf16_reduced_precision_reduction = before


class FlagAtBf16Products(TorchDispatchMode):
    """Records the reduced-precision flag at every bfloat16 matrix product torch dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.matmul, torch.ops.aten.addmm) and any(
            isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args
        ):
            self.seen.append(matmul.allow_bf16_reduced_precision_reduction)
        return func(*args, **(kwargs or {}))


def test_fp32_accumulation_sets_and_restores_the_flag() -> None:
    before = matmul.allow_bf16_reduced_precision_reduction
    try:
        for initial in (True, False):
            matmul.allow_bf16_reduced_precision_reduction = initial
            with fp32_accumulation():
                assert matmul.allow_bf16_reduced_precision_reduction is False
                with fp32_accumulation():
                    assert matmul.allow_bf16_reduced_precision_reduction is False
                assert matmul.allow_bf16_reduced_precision_reduction is False  # the outer screen still runs
            assert matmul.allow_bf16_reduced_precision_reduction is initial
            with pytest.raises(ValueError), fp32_accumulation():
                raise ValueError("a screen that fails")
            assert matmul.allow_bf16_reduced_precision_reduction is initial
    finally:
        matmul.allow_bf16_reduced_precision_reduction = before


def test_overlapping_screens_in_threads_restore_the_setting_once_both_end(reduced_precision_allowed) -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    inside: list[bool] = []

    def first() -> None:
        with fp32_accumulation():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with fp32_accumulation():
            second_in.set()
            first_out.wait(5)  # the first screen has ended; this one still needs float32 sums
            inside.append(matmul.allow_bf16_reduced_precision_reduction)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert inside == [False]
    assert matmul.allow_bf16_reduced_precision_reduction is True


def test_every_screen_product_runs_with_float32_accumulation(reduced_precision_allowed, tmp_path) -> None:
    rng = np.random.default_rng(0)
    gallery_file = tmp_path / "gallery.npy"
    np.save(gallery_file, rng.standard_normal((500, 32)).astype(np.float32))
    gallery = Gallery(gallery_file, device="cpu")
    queries = rng.standard_normal((50, 32)).astype(np.float32)

    def stream(count: int) -> np.ndarray:
        return rng.standard_normal((count, 32)).astype(np.float32)

    with FlagAtBf16Products() as record:
        select_separated(
            stream, 300, 0.5, 20_000, 128, gallery, max_gallery_cosine=0.8, device="cpu", int8=False
        )
        nearest_neighbours(queries, "cpu")
        gallery.max_cosine(queries)
        gallery.too_close(queries, 0.3)
    assert len(record.seen) > 10 and not any(record.seen)
    assert matmul.allow_bf16_reduced_precision_reduction is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_screen_error_bound_holds_on_cuda(reduced_precision_allowed) -> None:
    rng = np.random.default_rng(3)
    for dim in (128, 512, 2048):  # long reductions are where reduced-precision sums would drift
        x = rng.standard_normal((2048, dim)).astype(np.float32)
        x[1] = x[0] + 1e-3 * rng.standard_normal(dim).astype(np.float32)
        norms = row_norms64(x)
        screen = Screen.of(x, norms, torch.device("cuda"))
        with fp32_accumulation():
            screened = (screen.low @ screen.low.T).double().cpu().numpy()
        u = x.astype(np.float64) / norms[:, None]
        assert np.abs(screened - u @ u.T).max() <= screen_margin(screen.err, screen.err, dim)
