"""Per-image variations: targets, the IDperturb safety bound, Vec2Face sigmas, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from facesynth.identity import VARIATIONS


def _bank(n: int = 200, dim: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x * np.float32(7.0)  # not unit: variations must keep each vector's norm


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_none_returns_the_identity_vector():
    bank = _bank()
    vectors, cos = VARIATIONS.create("none").apply(bank, np.array([3, 3, 9]), np.array([0, 1, 0]), 5)
    np.testing.assert_array_equal(vectors, bank[[3, 3, 9]])
    np.testing.assert_array_equal(cos, 1.0)


def test_angular_hits_its_targets_without_safety_bound():
    bank = _bank()
    ids = np.repeat(np.arange(200), 10)
    attempts = np.tile(np.arange(10), 200)
    variation = VARIATIONS.create("angular", min_cosine=0.6, max_cosine=0.9, safety_bound=False)
    vectors, cos = variation.apply(bank, ids, attempts, seed=1)
    np.testing.assert_allclose(cos, _cos(vectors, bank[ids]), atol=1e-6)
    assert cos.min() >= 0.6 - 1e-6 and cos.max() <= 0.9 + 1e-6
    assert abs(cos.mean() - 0.75) < 0.01  # uniform on [0.6, 0.9]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), np.linalg.norm(bank[ids], axis=1), rtol=1e-5)


def test_angular_safety_bound_keeps_images_closest_to_their_identity():
    bank = _bank(n=300, dim=8)  # low dimension: neighbours are close, so the bound matters
    ids = np.repeat(np.arange(300), 20)
    attempts = np.tile(np.arange(20), 300)
    variation = VARIATIONS.create("angular", min_cosine=0.0, max_cosine=1.0, safety_bound=True)
    vectors, cos = variation.apply(bank, ids, attempts, seed=2)
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    gram = unit.astype(np.float64) @ unit.T.astype(np.float64)
    np.fill_diagonal(gram, -np.inf)
    bound = np.sqrt((1 + gram.max(axis=1)) / 2)
    assert (cos >= bound[ids] - 1e-6).all()
    # The bound's meaning: no image vector is closer to another identity than to its own.
    to_all = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float64) @ unit.T
    assert (to_all.argmax(axis=1) == ids).all()


def test_variations_depend_only_on_seed_identity_and_attempt():
    bank = _bank()
    for name in ("angular", "gaussian"):
        variation = VARIATIONS.create(name)
        together, cos = variation.apply(bank, np.array([5, 6, 7]), np.array([0, 3, 1]), seed=9)
        alone, cos_alone = VARIATIONS.create(name).apply(bank, np.array([6]), np.array([3]), seed=9)
        np.testing.assert_array_equal(together[1], alone[0])
        assert cos[1] == cos_alone[0]
        other, _ = variation.apply(bank, np.array([6]), np.array([3]), seed=10)
        assert not np.array_equal(other[0], alone[0])


def test_gaussian_sigma_mixture_matches_vec2face_cosines():
    bank = _bank(n=20, dim=512)
    ids = np.repeat(np.arange(20), 100)
    attempts = np.tile(np.arange(100), 20)
    for sigma, expected in ((0.3, 0.958), (0.5, 0.894), (0.7, 0.819)):
        vectors, cos = VARIATIONS.create("gaussian", sigmas=[sigma], weights=[1]).apply(
            bank, ids, attempts, 0
        )
        assert abs(cos.mean() - expected) < 0.005
        np.testing.assert_allclose(
            np.linalg.norm(vectors, axis=1), np.linalg.norm(bank[ids], axis=1), rtol=1e-5
        )
    _, mixed = VARIATIONS.create("gaussian").apply(bank, ids, attempts, 0)
    assert abs(mixed.mean() - (0.4 * 0.958 + 0.4 * 0.894 + 0.2 * 0.819)) < 0.005


def test_gaussian_draws_each_image_as_numpy_choice_and_normal_do():
    """The batched draws equal the straightforward per-image code (one default_rng, choice, normal)."""
    bank = _bank(n=50, dim=512)
    ids = np.repeat(np.arange(50), 40)
    attempts = np.tile(np.arange(40), 50)
    sigmas, weights = [0.3, 0.5, 0.7], np.array([0.4, 0.4, 0.2])
    vectors, cos = VARIATIONS.create("gaussian", sigmas=sigmas, weights=list(weights)).apply(
        bank, ids, attempts, 11
    )
    for row, (i, a) in enumerate(zip(ids, attempts, strict=True)):
        rng = np.random.default_rng([11, int(i), int(a), 0x676175])
        sigma = sigmas[rng.choice(3, p=weights / weights.sum())]
        base = bank[i].astype(np.float64)
        norm = np.linalg.norm(base)
        noisy = base + rng.standard_normal(512) * sigma * norm / np.sqrt(512)
        expected = (noisy * (norm / np.linalg.norm(noisy))).astype(np.float32)
        np.testing.assert_array_equal(vectors[row], expected)
    np.testing.assert_allclose(cos, _cos(vectors, bank[ids]), atol=1e-6)


def test_bad_variation_options_are_explained():
    from facesynth.errors import UserInputError

    with pytest.raises(UserInputError, match="min_cosine cannot exceed max_cosine"):
        VARIATIONS.create("angular", min_cosine=0.9, max_cosine=0.5)
    with pytest.raises(UserInputError, match="sigmas has 2 values but weights has 3"):
        VARIATIONS.create("gaussian", sigmas=[0.1, 0.2])
