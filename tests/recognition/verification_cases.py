"""Deterministic embeddings for the protocol parity fixture (pure numpy: the scratch venvs that run
insightface's code import this same file, see fixtures/README.md)."""

from __future__ import annotations

import hashlib

import numpy as np

# name -> (pairs, dim, noise, kind)
CASES: dict[str, tuple[int, int, float, str]] = {
    "n6000_d16": (6000, 16, 0.9, "gauss"),
    "n1237_d16": (1237, 16, 1.1, "gauss"),  # N mod 10 = 7: the first 7 folds hold one pair more
    "n95_d8": (95, 8, 1.3, "gauss"),
    "n2003_ties": (2003, 3, 0.0, "ties"),  # few distinct distances: accuracy ties and repeated FARs
    "n600_separable": (600, 8, 0.2, "gauss"),
}


def make_case(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw embeddings of the images [2N, d], raw embeddings of their flips, issame [N]) for a case."""
    pairs, dim, noise, kind = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    issame = rng.random(pairs) < 0.5
    if kind == "ties":
        # Embeddings from 4 fixed vectors: pair distances take a handful of exact values.
        basis = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.6, 0.8, 0], [-1.0, 0, 0]])
        first = rng.integers(0, 4, pairs)
        second = np.where(issame & (rng.random(pairs) < 0.8), first, rng.integers(0, 4, pairs))
        original = basis[np.stack([first, second], 1).reshape(-1)] * 3.0
        return original, original.copy(), issame
    centres = rng.standard_normal((pairs, 2, dim))
    centres[issame, 1] = centres[issame, 0]
    original = (centres + noise * rng.standard_normal((pairs, 2, dim))).reshape(2 * pairs, dim)
    flipped = original + 0.3 * noise * rng.standard_normal(original.shape)
    return original, flipped, issame


def case_digest(name: str) -> str:
    """sha256 of a case's arrays: proves the test regenerates exactly what the reference saw."""
    h = hashlib.sha256()
    for array in make_case(name):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()
