"""The report's numerics against straightforward reference computations with known answers."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from facesynth.report import metrics as M


def test_eer_and_fnmr_of_two_known_gaussians() -> None:
    # mated ~ N(0.6, 0.1), non-mated ~ N(0, 0.1): equal variances, so the EER threshold is the
    # midpoint 0.3 and EER = Phi(-0.3 / 0.1) = 0.00135
    rng = np.random.default_rng(0)
    mated = rng.normal(0.6, 0.1, 400_000)
    nonmated = rng.normal(0.0, 0.1, 400_000)
    eer, threshold = M.eer(mated, nonmated)
    assert abs(eer - norm.cdf(-3.0)) < 3e-4 and abs(threshold - 0.3) < 0.01
    # FNMR at FMR f: threshold t = 0.1 * Phi^-1(1 - f); FNMR = Phi((t - 0.6) / 0.1)
    for fmr in (1e-2, 1e-3):
        t = 0.1 * norm.ppf(1 - fmr)
        assert abs(M.threshold_at_fmr(nonmated, fmr) - t) < 0.005
        assert abs(M.fnmr_at_fmr(mated, nonmated, fmr) - norm.cdf((t - 0.6) / 0.1)) < 0.01
    assert abs(M.fisher_ratio(mated, nonmated) - 0.36 / 0.02) < 0.2


def test_threshold_at_fmr_counts_exactly() -> None:
    nonmated = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    t = M.threshold_at_fmr(nonmated, 1e-2)
    assert np.mean(nonmated >= t) == 0.01 and t == 0.99
    assert np.mean(nonmated >= M.threshold_at_fmr(nonmated, 1e-4)) == 0.0  # too few pairs: none pass


def test_bootstrap_interval_covers_the_point_estimate() -> None:
    rng = np.random.default_rng(1)
    mated, nonmated = rng.normal(0.5, 0.1, 2000), rng.normal(0.0, 0.1, 2000)
    low, high = M.bootstrap(mated, nonmated, M.fisher_ratio, 200, np.random.default_rng(2))
    assert low < M.fisher_ratio(mated, nonmated) < high and high - low < 2.0


def test_vendi_of_known_sets() -> None:
    eye = np.eye(8, dtype=np.float32)
    assert abs(M.vendi(eye) - 8.0) < 1e-6  # n orthogonal images: n
    assert abs(M.vendi(np.repeat(eye[:1], 20, axis=0)) - 1.0) < 1e-6  # all the same: 1
    two = np.concatenate([np.repeat(eye[:1], 5, 0), np.repeat(eye[1:2], 5, 0)])
    assert abs(M.vendi(two) - 2.0) < 1e-6  # two equal halves: 2
    wide = M.unit(np.random.default_rng(4).standard_normal((300, 16)))  # n > d path equals the n x n one
    w64 = wide.astype(np.float64)
    gram = np.linalg.eigvalsh(w64 @ w64.T / 300)
    gram = gram[gram > 1e-10]
    assert abs(M.vendi(wide) - math.exp(-np.sum(gram * np.log(gram)))) < 1e-6


def test_pairs_centroids_and_best_match() -> None:
    rng = np.random.default_rng(5)
    x = M.unit(rng.standard_normal((6, 4)))
    pairs = M.mated_pairs(x, rng)
    assert (
        len(pairs) == 15
        and np.isclose(
            np.sort(pairs), np.sort([x[i] @ x[j] for i in range(6) for j in range(i + 1, 6)])
        ).all()
    )
    labels = np.array([0, 0, 1, 1, 1, 2])
    nm = M.nonmated_pairs(x, labels, 1000, np.random.default_rng(6))
    same = {round(float(x[i] @ x[j]), 5) for i in range(6) for j in range(6) if labels[i] != labels[j]}
    assert len(nm) == 1000 and {round(float(v), 5) for v in nm} <= same
    c = M.centroids(x, labels, 4)
    np.testing.assert_allclose(c[1], M.unit(x[2:5].mean(0)), rtol=1e-5)
    assert np.isnan(c[3]).all()
