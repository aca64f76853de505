"""The CPU int8 screen: its error bound holds by brute force, and its decisions equal exact ones."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from identity_helpers import anisotropic_stream, naive_greedy, pool_stream

from facesynth.identity import int8_screen
from facesynth.identity.bank import KeptVectors, select_separated
from facesynth.identity.int8_screen import Int8Keys, Int8Queries, key_levels, resolve_in_order
from facesynth.separation import Screen, exact_cosine, row_norms64, unit_rows

CPU = torch.device("cpu")


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


def test_int8_products_are_exact_on_this_cpu():
    # CI machines have AVX512-VNNI (127) or at least AVX2 (64); 0 would silently disable the screen.
    assert key_levels() in (64, 127)
    q = torch.full((4, 512), 127, dtype=torch.int8)
    k = torch.full((3, 512), key_levels(), dtype=torch.int8)
    assert (torch._int_mm(q, k.T) == 127 * key_levels() * 512).all()


@pytest.mark.parametrize("exponent", [0.0, 0.5, 1.0])
def test_quantised_cosines_are_within_their_margin(exponent: float):
    dim = 512
    keys = anisotropic_stream(dim, exponent, seed=1)(3000)
    queries = anisotropic_stream(dim, exponent, seed=2)(500)
    k = Int8Keys.of(unit_rows(keys, row_norms64(keys)))
    q = Int8Queries.of(unit_rows(queries, row_norms64(queries)))
    products = torch._int_mm(q.codes, k.codes[: len(k)].T).numpy().astype(np.float64)
    screened = products * q.scale[:, None] * k.scale
    error = np.abs(screened - unit64(queries) @ unit64(keys).T)
    margin = q.err[:, None] + k.err[None, : len(k)] + q.err[:, None] * k.err[None, : len(k)]
    assert (error <= margin).all()
    # The bound is not vacuous: a few hundredths of a cosine, and the quantisation uses much of it.
    assert margin.max() < 0.05
    assert error.max() > 0.05 * margin.max()


@cache
def planted() -> tuple[np.ndarray, np.ndarray, float]:
    """Kept rows, and candidates around and far above the threshold to them, plus random ones."""
    dim, threshold = 512, 0.3
    keys = anisotropic_stream(dim, 0.3, seed=3)(1200)
    offsets = np.r_[np.linspace(-0.05, 0.05, 200), np.full(50, 0.3)]
    candidates = np.concatenate(
        [anisotropic_stream(dim, 0.3, seed=4)(300), near_pairs(keys, threshold, offsets, seed=5)]
    )
    return keys, candidates, threshold


def too_close(kept: KeptVectors, candidates: np.ndarray, threshold: float) -> np.ndarray:
    norms = row_norms64(candidates)
    unit = unit_rows(candidates, norms)
    queries = Int8Queries.of(unit) if kept.int8 else None
    return kept.too_close(candidates, norms, lambda: Screen.of_unit(unit, CPU), queries, threshold)


def add_all(kept: KeptVectors, keys: np.ndarray, batch: int) -> None:
    norms = row_norms64(keys)
    for start in range(0, len(keys), batch):
        x, n = keys[start : start + batch], norms[start : start + batch]
        unit = unit_rows(x, n)
        kept.add(x, n, np.arange(len(x)), unit, lambda u=unit: Screen.of_unit(u, CPU))


@pytest.mark.parametrize("tiles", [(4096, 1024), (70, 50)], ids=["default-tiles", "many-tiles"])
def test_kept_vectors_answer_equals_brute_force(tiles: tuple[int, int], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(int8_screen, "TILE_ROWS", tiles[0])
    monkeypatch.setattr(int8_screen, "TILE_KEYS", tiles[1])
    keys, candidates, threshold = planted()
    kept = KeptVectors(len(keys), keys.shape[1], CPU, int8=True)
    add_all(kept, keys, batch=256)
    assert kept.int8 and len(kept.groups) >= 1 and len(kept.low) == 0  # all in int8
    expected = ((unit64(candidates) @ unit64(keys).T) > threshold).any(axis=1)
    assert 100 < expected.sum() < len(candidates) - 100
    np.testing.assert_array_equal(too_close(kept, candidates, threshold), expected)


def test_rows_too_coarse_for_int8_are_screened_in_bfloat16():
    # Rows dominated by one coordinate: their group's scale is so coarse that int8 would need
    # a margin above MAX_MARGIN, so they are kept in bfloat16 beside the int8 groups.
    keys, candidates, threshold = planted()
    rng = np.random.default_rng(8)
    spiky = 0.05 * rng.standard_normal((100, keys.shape[1])).astype(np.float32)
    spiky[np.arange(100), rng.integers(0, keys.shape[1], 100)] = 1.0
    spiky_near = near_pairs(spiky, threshold, np.linspace(-0.05, 0.05, 100), seed=9)
    all_keys = np.concatenate([keys, spiky])
    kept = KeptVectors(len(all_keys), keys.shape[1], CPU, int8=True)
    add_all(kept, all_keys, batch=400)
    assert len(kept.low) > 0 and len(kept.groups) >= 2  # a second group, and some rows in bfloat16
    queries = np.concatenate([candidates, spiky_near])
    expected = ((unit64(queries) @ unit64(all_keys).T) > threshold).any(axis=1)
    np.testing.assert_array_equal(too_close(kept, queries, threshold), expected)


@pytest.mark.parametrize("tiles", [(4096, 1024), (70, 50)], ids=["default-tiles", "many-tiles"])
def test_int8_in_block_resolution_equals_sequential_greedy(tiles, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(int8_screen, "TILE_ROWS", tiles[0])
    monkeypatch.setattr(int8_screen, "TILE_KEYS", tiles[1])
    keys, candidates, threshold = planted()
    block = np.concatenate([keys, candidates])  # candidates planted near earlier rows
    norms = row_norms64(block)
    unit = unit_rows(block, norms)
    rows = np.flatnonzero(np.random.default_rng(10).random(len(block)) < 0.9)  # some rows already gone
    got = resolve_in_order(
        unit, Int8Queries.of(unit), rows, threshold, exact_cosine(block, norms, block, norms)
    )
    expected = np.zeros(len(rows), dtype=bool)
    u = unit64(block[rows])
    for i in range(len(rows)):
        expected[i] = not (u[:i][expected[:i]] @ u[i] > threshold).any()
    assert 50 < (~expected).sum() < len(rows) - 50
    assert got is not None
    np.testing.assert_array_equal(got, expected)


def test_greedy_with_int8_screen_equals_naive_greedy():
    # 512-d sphere at a low threshold: plenty of rejections, decided by the int8 screen.
    pool = np.random.default_rng(6).standard_normal((5000, 512), dtype=np.float32)
    expected = naive_greedy(pool_stream(pool), 2500, 0.16)
    assert len(expected) == 2500
    result = select_separated(pool_stream(pool), 2500, 0.16, budget=5000, block_size=300)
    assert result.rejected_near_identity > 100
    np.testing.assert_array_equal(result.vectors, expected)
