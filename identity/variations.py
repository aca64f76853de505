"""Per-image identity vectors: how image ``attempt`` of ``identity`` departs from the bank vector.

Every vector depends on ``(seed, identity, attempt)`` only, never on which other images share
its batch: each image gets its own ``numpy.random.default_rng([seed, identity, attempt, salt])``.
``apply`` returns the per-image vectors and their realised cosine to the identity vector.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field, model_validator

from facesynth.registry import StrictOptions
from facesynth.separation import (
    PRODUCT_ELEMENTS,
    check_vectors,
    resolve_device,
)

_ANGULAR_SALT = 0x616E67  # "ang"
_GAUSSIAN_SALT = 0x676175  # "gau"


def _rngs(seed: int, identities: np.ndarray, attempts: np.ndarray, salt: int) -> list[np.random.Generator]:
    # default_rng(entropy)'s generator, built without its argument checks (a third of its cost)
    return [
        np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(i), int(a), salt])))
        for i, a in zip(np.asarray(identities).tolist(), np.asarray(attempts).tolist(), strict=True)
    ]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.einsum("ij,ij->i", a64, b64) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


class NoVariation:
    """Every image of an identity is conditioned on the identity vector itself (Arc2Face's reference)."""

    class Options(StrictOptions):
        pass

    def __init__(self, options: Options) -> None:
        self.options = options

    def apply(
        self, bank_vectors: np.ndarray, identities: np.ndarray, attempts: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.asarray(bank_vectors[np.asarray(identities)], dtype=np.float32)
        return vectors, np.ones(len(vectors), dtype=np.float32)


class AngularVariation:
    """IDperturb: rotate the identity vector to a cosine drawn uniformly from [min_cosine, max_cosine].

    With ``safety_bound``, the lower end is raised per identity to ``sqrt((1 + c_nn) / 2)``,
    ``c_nn`` the cosine to its nearest other identity, so an image vector stays at least as close
    to its own identity as to any other.
    """

    class Options(StrictOptions):
        min_cosine: float = Field(0.4, ge=-1, le=1)
        max_cosine: float = Field(1.0, ge=-1, le=1)
        safety_bound: bool = True
        device: str = Field("auto", description="where the nearest-identity search runs: auto, cpu or cuda")

        @model_validator(mode="after")
        def _ordered(self) -> AngularVariation.Options:
            if self.min_cosine > self.max_cosine:
                raise ValueError("min_cosine cannot exceed max_cosine")
            return self

    def __init__(self, options: Options) -> None:
        self.options = options
        self._bank: np.ndarray | None = None
        self._unit: torch.Tensor | None = None
        self._nearest: dict[int, float] = {}

    def nearest_cosine(self, bank_vectors: np.ndarray, identities: np.ndarray) -> np.ndarray:
        """Cosine of each identity to its nearest other identity, computed on demand and cached.

        A float32 product is within ~1e-6 of the exact cosine; 1e-5 is added so the bound stays safe.
        """
        if bank_vectors is not self._bank:
            bank = check_vectors(bank_vectors, "identity bank")
            norms = np.linalg.norm(bank.astype(np.float64), axis=1, keepdims=True)
            self._unit = torch.from_numpy((bank / norms).astype(np.float32)).to(
                resolve_device(self.options.device)
            )
            self._bank, self._nearest = bank_vectors, {}
        assert self._unit is not None
        missing = sorted({int(i) for i in identities} - self._nearest.keys())
        n = self._unit.shape[0]
        step = max(1, PRODUCT_ELEMENTS // (4 * n))
        for start in range(0, len(missing), step):
            ids = torch.tensor(missing[start : start + step], device=self._unit.device)
            sims = self._unit[ids] @ self._unit.T
            sims[torch.arange(len(ids), device=ids.device), ids] = -np.inf
            for i, c in zip(missing[start : start + step], sims.amax(dim=1).cpu().tolist(), strict=True):
                self._nearest[i] = c + 1e-5 if n > 1 else -1.0
        return np.array([self._nearest[int(i)] for i in identities], dtype=np.float64)

    def lower_bounds(self, bank_vectors: np.ndarray, identities: np.ndarray) -> np.ndarray:
        """Per-image lower end of the cosine range (min_cosine, raised by the safety bound)."""
        low = np.full(len(identities), self.options.min_cosine, dtype=np.float64)
        if self.options.safety_bound:
            nearest = self.nearest_cosine(bank_vectors, identities)
            low = np.maximum(low, np.sqrt((1 + np.clip(nearest, -1, 1)) / 2))
        return low

    def apply(
        self, bank_vectors: np.ndarray, identities: np.ndarray, attempts: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        identities = np.asarray(identities, dtype=np.int64)
        base = np.asarray(bank_vectors[identities], dtype=np.float64)
        if len(identities) == 0:
            return base.astype(np.float32), np.empty(0, dtype=np.float32)
        norms = np.linalg.norm(base, axis=1, keepdims=True)
        unit = base / norms
        low = self.lower_bounds(bank_vectors, identities)
        # When the safety bound exceeds max_cosine, the safety bound wins: the range collapses to it.
        high = np.maximum(low, self.options.max_cosine)
        out = np.empty_like(unit)
        for row, rng in enumerate(_rngs(seed, identities, attempts, _ANGULAR_SALT)):
            c = rng.uniform(low[row], high[row])
            noise = rng.standard_normal(unit.shape[1])
            noise -= (noise @ unit[row]) * unit[row]
            noise /= np.linalg.norm(noise)
            out[row] = c * unit[row] + np.sqrt(max(0.0, 1 - c * c)) * noise
        vectors = (out * norms).astype(np.float32)
        return vectors, _cosine(vectors, base).astype(np.float32)


class GaussianVariation:
    """Vec2Face: add per-dimension Gaussian noise, then rescale to the original norm.

    Each image picks ``sigma`` from ``sigmas`` with probabilities ``weights``. Sigma is relative to
    the vector's per-dimension RMS (norm / sqrt(D)), so unit and Vec2Face-scale vectors behave the
    same: expected cosine to the identity is about 1 / sqrt(1 + sigma^2) (0.96, 0.89, 0.82).
    """

    class Options(StrictOptions):
        sigmas: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7], min_length=1)
        weights: list[float] = Field(default_factory=lambda: [0.4, 0.4, 0.2], min_length=1)

        @model_validator(mode="after")
        def _matching(self) -> GaussianVariation.Options:
            if len(self.sigmas) != len(self.weights):
                raise ValueError(f"sigmas has {len(self.sigmas)} values but weights has {len(self.weights)}")
            if any(s < 0 for s in self.sigmas):
                raise ValueError("sigmas must be >= 0")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be >= 0 with a positive sum")
            return self

    def __init__(self, options: Options) -> None:
        self.options = options
        self.sigmas = np.asarray(options.sigmas, dtype=np.float64)
        self.weights = np.asarray(options.weights, dtype=np.float64) / sum(options.weights)
        self.cdf = self.weights.cumsum()
        self.cdf /= self.cdf[-1]  # as numpy's Generator.choice normalises it

    def apply(
        self, bank_vectors: np.ndarray, identities: np.ndarray, attempts: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        identities = np.asarray(identities, dtype=np.int64)
        base = np.asarray(bank_vectors[identities], dtype=np.float64)
        if len(identities) == 0:
            return base.astype(np.float32), np.empty(0, dtype=np.float32)
        dim = base.shape[1]
        norms = np.linalg.norm(base, axis=1, keepdims=True)
        picks, noise = np.empty(len(base)), np.empty_like(base)
        for row, rng in enumerate(_rngs(seed, identities, attempts, _GAUSSIAN_SALT)):
            picks[row] = rng.random()  # what rng.choice(len(sigmas), p=weights) draws (one double)
            noise[row] = rng.standard_normal(dim)
        sigma = self.sigmas[self.cdf.searchsorted(picks, side="right")]  # and how choice inverts it
        noisy = base + noise * sigma[:, None] * norms / np.sqrt(dim)
        # Each row's norm as np.linalg.norm of the row (a dot product) computes it: bit for bit.
        out = noisy * (norms[:, 0] / np.sqrt([row @ row for row in noisy]))[:, None]
        vectors = out.astype(np.float32)
        return vectors, _cosine(vectors, base).astype(np.float32)
