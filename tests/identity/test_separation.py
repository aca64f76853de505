"""Exact separation: the bank builder equals the naive greedy and its bound holds by brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from identity_helpers import anisotropic_stream, max_offdiagonal_cosine, naive_greedy, pool_stream

from facesynth import separation
from facesynth.errors import UserInputError
from facesynth.identity.bank import select_separated
from facesynth.separation import SAFETY, Screen, nearest_neighbours, row_norms64, screen_margin


# Each case has several blocks of the full block size and rejects more than a quarter of its count.
# The screen is the costly part (on CPUs without native int8/bfloat16 products it is emulated, about
# 50 s for one 20,000 bank on a CI core), so one prior runs at 20,000 and the two that reject the most
# at 5,000 with 4x smaller blocks: about as many blocks as at 20,000, at a sixteenth of the products.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("dim", "exponent", "threshold", "count", "block_size"),
    [(128, 0.7, 0.4, 5_000, 1024), (192, 0.5, 0.3, 5_000, 1024), (64, 0.3, 0.5, 20_000, 4096)],
    ids=["5k-d128", "5k-d192", "20k-d64"],
)
def test_large_bank_is_exactly_separated_under_anisotropic_prior(
    dim: int, exponent: float, threshold: float, count: int, block_size: int
):
    draw = anisotropic_stream(dim, exponent, seed=7)
    result = select_separated(draw, count, threshold, budget=2_000_000, block_size=block_size, device="cpu")
    assert result.vectors.shape == (count, dim)
    # The prior is anisotropic enough that many candidates are rejected.
    assert result.rejected_near_identity > count // 4
    assert result.drawn == count + result.rejected_near_identity
    assert max_offdiagonal_cosine(result.vectors) <= threshold - SAFETY


@pytest.mark.parametrize("int8", [True, False], ids=["int8-screen", "bf16-screen"])
def test_blocked_greedy_equals_naive_greedy(int8: bool):
    pool = anisotropic_stream(48, 0.3, seed=3)(30_000)
    expected = naive_greedy(pool_stream(pool), 1500, 0.4)
    result = select_separated(
        pool_stream(pool), 1500, 0.4, budget=30_000, block_size=700, device="cpu", int8=int8
    )
    np.testing.assert_array_equal(result.vectors, expected)
    # A different block size visits the same stream and keeps the same identities.
    again = select_separated(
        pool_stream(pool), 1500, 0.4, budget=30_000, block_size=128, device="cpu", int8=int8
    )
    np.testing.assert_array_equal(again.vectors, expected)
    assert result.drawn == again.drawn


def test_products_split_into_many_strips_give_the_same_bank(monkeypatch: pytest.MonkeyPatch):
    # Small bfloat16 products: every block is resolved in many strips and screened in many chunks.
    monkeypatch.setattr(separation, "PRODUCT_ELEMENTS", 3000)
    monkeypatch.setattr(separation, "STRIP", 40)
    pool = anisotropic_stream(48, 0.3, seed=3)(8000)
    expected = naive_greedy(pool_stream(pool), 600, 0.4)
    result = select_separated(
        pool_stream(pool), 600, 0.4, budget=8000, block_size=300, device="cpu", int8=False
    )
    np.testing.assert_array_equal(result.vectors, expected)


@pytest.mark.parametrize("int8", [True, False], ids=["int8-screen", "bf16-screen"])
def test_borderline_pairs_are_decided_in_float64(int8: bool):
    # Pairs planted at cosines within the screen's error of the threshold, on both sides.
    rng = np.random.default_rng(0)
    dim, threshold = 64, 0.3
    base = rng.standard_normal((200, dim))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    rows = []
    for i, offset in enumerate(np.linspace(-4e-3, 4e-3, 200)):
        noise = rng.standard_normal(dim)
        noise -= (noise @ base[i]) * base[i]
        noise /= np.linalg.norm(noise)
        c = threshold + offset
        rows += [base[i], c * base[i] + np.sqrt(1 - c * c) * noise]
    pool = np.array(rows, dtype=np.float32)
    expected = naive_greedy(pool_stream(pool), len(pool), threshold)
    assert 150 < len(expected) < 400  # both sides of the threshold are represented
    result = select_separated(
        pool_stream(pool), len(expected), threshold, budget=len(pool), block_size=64, device="cpu", int8=int8
    )
    np.testing.assert_array_equal(result.vectors, expected)
    assert max_offdiagonal_cosine(result.vectors) <= threshold - SAFETY


def test_screen_error_stays_within_its_bound():
    rng = np.random.default_rng(1)
    for dim in (16, 128, 512):
        x = rng.standard_normal((300, dim)).astype(np.float32) * rng.uniform(0.1, 10, (300, 1)).astype(
            np.float32
        )
        x[1] = x[0] + 1e-3 * rng.standard_normal(dim).astype(np.float32)  # a near-duplicate pair
        norms = row_norms64(x)
        screen = Screen.of(x, norms, torch.device("cpu"))
        screened = (screen.low @ screen.low.T).double().numpy()
        u = x.astype(np.float64) / norms[:, None]
        exact = u @ u.T
        assert np.abs(screened - exact).max() <= screen_margin(screen.err, screen.err, dim)


def test_nearest_neighbours_match_brute_force():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 24)).astype(np.float32)
    x[10] = x[20] * 3  # exact duplicate direction: cosine 1
    best, arg = nearest_neighbours(x, "cpu", block=700)
    u = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    gram = u @ u.T
    np.fill_diagonal(gram, -np.inf)
    np.testing.assert_allclose(best, gram.max(axis=1), rtol=0, atol=1e-12)
    assert (gram[np.arange(len(x)), arg] == gram.max(axis=1)).all()
    assert arg[10] == 20 and arg[20] == 10


def test_unreachable_count_reports_how_far_it_got():
    draw = anisotropic_stream(8, 0.0, seed=0)
    with pytest.raises(
        UserInputError, match=r"reached only [\d,]+ of 5,000 identities at max_cosine 0.1 after 20,000"
    ):
        select_separated(draw, 5000, 0.1, budget=20_000, block_size=1024, device="cpu")


def test_nan_candidates_are_rejected_with_their_row():
    pool = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    pool[17, 3] = np.nan
    with pytest.raises(UserInputError, match="row 17 contains NaN"):
        select_separated(pool_stream(pool), 40, 0.9, budget=50, block_size=64, device="cpu")
