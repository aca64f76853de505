"""The report's numerics as pure numpy functions over unit embeddings and labels (no files, no plots).

Conventions: embeddings are float32 unit rows; ``labels`` are dense int64 class indices; a
"score" is a cosine similarity (higher = more alike). Work that would be quadratic in the
number of images is done per identity or in blocks, so memory stays flat as datasets grow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- verification


def mated_pairs(embeddings: np.ndarray, rng: np.random.Generator, keep: float = 1.0) -> np.ndarray:
    """Cosines of all pairs of one identity's images (upper triangle), each kept with probability ``keep``."""
    n = len(embeddings)
    if n < 2:
        return np.zeros(0, np.float32)
    sims = embeddings @ embeddings.T
    scores = sims[np.triu_indices(n, k=1)]
    if keep < 1.0:
        scores = scores[rng.random(len(scores)) < keep]
    return scores.astype(np.float32)


def nonmated_pairs(
    embeddings: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Cosines of ``count`` random pairs of images of different identities (fixed by ``rng``)."""
    n = len(labels)
    if n < 2 or labels.min() == labels.max():
        return np.zeros(0, np.float32)
    scores: list[np.ndarray] = []
    need = count
    while need > 0:
        i = rng.integers(0, n, 2 * need)
        j = rng.integers(0, n, 2 * need)
        ok = labels[i] != labels[j]
        i, j = i[ok][:need], j[ok][:need]
        for s in range(0, len(i), 16384):  # bounded gathers
            a, b = embeddings[i[s : s + 16384]], embeddings[j[s : s + 16384]]
            scores.append(np.einsum("ij,ij->i", a, b).astype(np.float32))
        need -= len(i)
    return np.concatenate(scores)


def _rates(m: np.ndarray, nm: np.ndarray, t: float) -> tuple[float, float]:
    """(FNMR, FMR) at threshold ``t`` on sorted scores: mated below ``t``, non-mated at or above it."""
    return np.searchsorted(m, t, "left") / len(m), 1.0 - np.searchsorted(nm, t, "left") / len(nm)


def eer_sorted(m: np.ndarray, nm: np.ndarray) -> tuple[float, float]:
    """``eer`` on sorted arrays without scanning every score.

    FNMR - FMR never decreases as the threshold rises, so its sign change is found by bisection
    over each array's scores; the closest candidates on either side of it are then compared.
    """
    candidates = []
    for values in (m, nm):
        lo, hi = 0, len(values) - 1
        while lo < hi:  # first score where FNMR - FMR >= 0
            mid = (lo + hi) // 2
            fnmr, fmr = _rates(m, nm, values[mid])
            if fnmr - fmr >= 0:
                hi = mid
            else:
                lo = mid + 1
        candidates += [float(values[i]) for i in (lo - 1, lo) if 0 <= i < len(values)]
    best = min(candidates, key=lambda t: (abs(np.subtract(*_rates(m, nm, t))), t))
    fnmr, fmr = _rates(m, nm, best)
    return float((fnmr + fmr) / 2), best


def eer(mated: np.ndarray, nonmated: np.ndarray) -> tuple[float, float]:
    """(equal error rate, its threshold): where FNMR (mated < t) meets FMR (non-mated >= t).

    Evaluated at the observed scores; the EER is the mean of FMR and FNMR at the score where they
    are closest (the lowest such score on a tie).
    """
    return eer_sorted(np.sort(mated), np.sort(nonmated))


def threshold_at_fmr(nonmated: np.ndarray, fmr: float, presorted: bool = False) -> float:
    """The smallest threshold whose false match rate (share of non-mated >= t) is at most ``fmr``."""
    nm = nonmated if presorted else np.sort(nonmated)
    k = int(np.ceil(len(nm) * (1.0 - fmr)))
    if k >= len(nm):
        return float(np.nextafter(nm[-1], np.inf))  # too few non-mated pairs: stricter than all of them
    return float(nm[k]) if nm[k] > nm[k - 1] else float(np.nextafter(nm[k], np.inf))


def fnmr_at_fmr(mated: np.ndarray, nonmated: np.ndarray, fmr: float) -> float:
    """Share of mated pairs below the threshold that lets through ``fmr`` of the non-mated ones."""
    return float(np.mean(mated < threshold_at_fmr(nonmated, fmr)))


def verification_sorted(m: np.ndarray, nm: np.ndarray, fmrs: tuple[float, ...]) -> np.ndarray:
    """[EER, FNMR at each FMR, Fisher ratio] of sorted mated and non-mated scores."""
    fnmrs = [np.searchsorted(m, threshold_at_fmr(nm, f, presorted=True), "left") / len(m) for f in fmrs]
    return np.array([eer_sorted(m, nm)[0], *fnmrs, fisher_ratio(m, nm)])


def resample_sorted(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A bootstrap resample (with replacement) of sorted ``values``, already sorted: no sort needed."""
    counts = np.bincount(rng.integers(0, len(values), len(values)), minlength=len(values))
    return np.repeat(values, counts)


def fisher_ratio(mated: np.ndarray, nonmated: np.ndarray) -> float:
    """Fisher discriminant ratio (mu_m - mu_n)^2 / (var_m + var_n): larger = better separated."""
    return float((mated.mean() - nonmated.mean()) ** 2 / (mated.var() + nonmated.var()))


def bootstrap(
    mated: np.ndarray,
    nonmated: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    rounds: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """95% percentile interval of ``statistic`` over ``rounds`` resamplings (with replacement) of both sets."""
    values = [
        statistic(
            mated[rng.integers(0, len(mated), len(mated))],
            nonmated[rng.integers(0, len(nonmated), len(nonmated))],
        )
        for _ in range(rounds)
    ]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


# ----------------------------------------------------------------------------- identities


def centroids(embeddings: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Unit mean embedding of each class; a class without images gets a NaN row."""
    sums = np.zeros((classes, embeddings.shape[1]), np.float64)
    np.add.at(sums, labels, embeddings)
    counts = np.bincount(labels, minlength=classes)
    out = unit(sums.astype(np.float32))
    out[counts == 0] = np.nan
    return out


def vendi(embeddings: np.ndarray) -> float:
    """Vendi score with the cosine kernel: exp of the entropy of the eigenvalues of K/n (K = X X^T).

    1 for identical images, n for n mutually orthogonal ones. Computed on the smaller of
    X X^T / n and X^T X / n (same non-zero eigenvalues).
    """
    x = np.asarray(embeddings, np.float64)
    n = len(x)
    gram = (x @ x.T if n <= x.shape[1] else x.T @ x) / n
    eig = np.clip(np.linalg.eigvalsh(gram), 0, None)
    eig = eig[eig > 1e-12]
    return float(np.exp(-np.sum(eig * np.log(eig))))


def vendi_of_grams(grams: np.ndarray) -> np.ndarray:
    """Vendi scores of a stack of normalised cosine Gram matrices [B, n, n] (K / n)."""
    eig = np.clip(np.linalg.eigvalsh(grams), 0, None)
    terms = np.where(eig > 1e-12, eig * np.log(np.where(eig > 1e-12, eig, 1.0)), 0.0)
    return np.exp(-terms.sum(axis=-1))


def histogram(values: np.ndarray, bins: np.ndarray) -> list[int]:
    """Counts of finite ``values`` per bin (for stats.json)."""
    values = values[np.isfinite(values)]
    return np.histogram(values, bins=bins)[0].astype(int).tolist()


def summary(values: np.ndarray) -> dict[str, float | int]:
    """count, mean, std and quantiles of the finite values (NaN when there are none)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"count": 0}
    q = np.percentile(v, [0, 5, 25, 50, 75, 95, 100])
    keys = ("min", "p05", "p25", "median", "p75", "p95", "max")
    return {"count": int(len(v)), "mean": float(v.mean()), "std": float(v.std())} | {
        k: float(x) for k, x in zip(keys, q, strict=True)
    }
