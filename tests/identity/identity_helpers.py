"""Helpers for identity tests: anisotropic priors and a brute-force reference greedy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from facesynth.separation import SAFETY


def anisotropic_stream(dim: int, exponent: float, seed: int) -> Callable[[int], np.ndarray]:
    """Candidates from a Gaussian whose variances decay as (1 + i)^-exponent, in a random basis."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(np.random.default_rng(seed + 1).standard_normal((dim, dim)))
    factor = (basis * np.sqrt((1.0 + np.arange(dim)) ** -exponent)).T.astype(np.float32)

    def draw(n: int) -> np.ndarray:
        return rng.standard_normal((n, dim), dtype=np.float32) @ factor

    return draw


def naive_greedy(draw: Callable[[int], np.ndarray], count: int, max_cosine: float) -> np.ndarray:
    """One candidate at a time, checked against every kept vector in float64: the reference result."""
    kept: list[np.ndarray] = []
    units: np.ndarray | None = None
    while len(kept) < count:
        rows = draw(1)
        if len(rows) == 0:  # stream exhausted: return what was kept
            break
        x = rows[0]
        u = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64))
        if units is None:
            units = np.empty((count, len(u)))
        if not kept or (units[: len(kept)] @ u).max() <= max_cosine - SAFETY:
            units[len(kept)] = u
            kept.append(x)
    return np.array(kept, dtype=np.float32)


def pool_stream(pool: np.ndarray) -> Callable[[int], np.ndarray]:
    """Serve rows of a fixed array in order, so two consumers see bit-identical candidates."""
    position = 0

    def draw(n: int) -> np.ndarray:
        nonlocal position
        rows = pool[position : position + n]
        position += len(rows)
        return rows

    return draw


def max_offdiagonal_cosine(vectors: np.ndarray) -> float:
    """Brute-force largest pairwise cosine: float32 products, then the top pairs again in float64."""
    u64 = vectors.astype(np.float64)
    u64 /= np.linalg.norm(u64, axis=1, keepdims=True)
    u32 = u64.astype(np.float32)
    best32 = np.empty(len(u32), dtype=np.float32)
    for start in range(0, len(u32), 4096):
        gram = u32[start : start + 4096] @ u32.T
        rows = np.arange(start, min(start + 4096, len(u32)))
        gram[rows - start, rows] = -np.inf
        best32[rows] = gram.max(axis=1)
    # float32 products are within 1e-5 of float64 ones here: re-check every row that could be the max.
    top = np.flatnonzero(best32 >= best32.max() - 1e-5)
    gram = u64[top] @ u64.T
    gram[np.arange(len(top)), top] = -np.inf
    return float(gram.max())
