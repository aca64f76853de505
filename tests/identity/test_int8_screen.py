"""The CPU int8 screen: its error bound holds by brute force, and banks built with it are unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from identity_helpers import anisotropic_stream, naive_greedy, pool_stream

from facesynth.identity.bank import KeptVectors, select_separated
from facesynth.identity.int8_screen import Int8Keys, Int8Queries
from facesynth.identity.separation import Screen, row_norms64


def unit64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def near_pairs(keys: np.ndarray, threshold: float, offsets: np.ndarray, seed: int) -> np.ndarray:
    """One candidate per offset, at cosine ``threshold + offset`` to a random key."""
    rng = np.random.default_rng(seed)
    u = unit64(keys)
    rows = []
    for offset in offsets:
        base = u[rng.integers(len(u))]
        noise = rng.standard_normal(len(base))
        noise -= (noise @ base) * base
        noise /= np.linalg.norm(noise)
        c = threshold + offset
        rows.append(c * base + np.sqrt(1 - c * c) * noise)
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("exponent", [0.0, 0.5, 1.0])
def test_screened_row_maximum_is_within_its_margin(exponent: float):
    dim = 512
    keys = anisotropic_stream(dim, exponent, seed=1)(3000)
    queries = anisotropic_stream(dim, exponent, seed=2)(500)
    frozen = Int8Keys(keys, row_norms64(keys), offset=0)
    q = Int8Queries.of(queries, row_norms64(queries))
    screened = frozen.row_max(q, np.arange(len(queries)))
    exact = (unit64(queries) @ unit64(keys).T).max(axis=1)
    error = np.abs(screened - exact)
    margin = frozen.margin(q)
    assert (error <= margin).all()
    # The bound is not vacuous: it is a few hundredths of a cosine, and the screen uses much of it.
    assert margin.max() < 0.08
    assert error.max() > 0.05 * margin.max()


def test_kept_vectors_answer_equals_brute_force():
    dim, threshold = 512, 0.3
    keys = anisotropic_stream(dim, 0.3, seed=3)(1200)
    # Candidates: random ones (clearly below), and planted ones just around and far above the threshold.
    offsets = np.r_[np.linspace(-0.05, 0.05, 200), np.full(50, 0.3)]
    candidates = np.concatenate(
        [anisotropic_stream(dim, 0.3, seed=4)(300), near_pairs(keys, threshold, offsets, seed=5)]
    )
    kept = KeptVectors(len(keys), dim, torch.device("cpu"), int8_block=256)
    norms = row_norms64(keys)
    kept.add(keys, norms, Screen.of(keys, norms, torch.device("cpu")), np.arange(len(keys)))
    assert [start for start, _, _ in kept.frozen] == [0, 256, 512, 768]
    assert all(screen is not None for *_, screen in kept.frozen)  # the int8 screen is really in use
    c_norms = row_norms64(candidates)
    got = kept.too_close(candidates, c_norms, Screen.of(candidates, c_norms, torch.device("cpu")), threshold)
    expected = ((unit64(candidates) @ unit64(keys).T) > threshold).any(axis=1)
    np.testing.assert_array_equal(got, expected)
    assert 100 < expected.sum() < len(candidates) - 100


def test_greedy_with_int8_blocks_equals_naive_greedy():
    # 512-d sphere at a low threshold: plenty of rejections against frozen int8 blocks.
    pool = np.random.default_rng(6).standard_normal((5000, 512), dtype=np.float32)
    expected = naive_greedy(pool_stream(pool), 2500, 0.16)
    assert len(expected) == 2500
    result = select_separated(pool_stream(pool), 2500, 0.16, budget=5000, block_size=300, int8_block=256)
    assert result.rejected_near_identity > 100
    np.testing.assert_array_equal(result.vectors, expected)
