"""Spreading: a bounded repulsion on the sphere that raises the smallest angle between identities.

Each step pushes every vector away from a softmax-weighted mix of its nearest neighbours
(HyperFace optimises a similar objective), then projects back onto the sphere. The iterate with
the lowest maximum nearest-neighbour cosine is kept, so spreading never makes the bank worse;
the caller re-checks it exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from facesynth.identity.options import SpreadOptions
from facesynth.separation import resolve_device


def _neighbours(unit: torch.Tensor, k: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = unit.shape[0]
    values = torch.empty((n, k), dtype=unit.dtype, device=unit.device)
    index = torch.empty((n, k), dtype=torch.long, device=unit.device)
    for start in range(0, n, block):
        sims = unit[start : start + block] @ unit.T
        rows = torch.arange(start, start + len(sims), device=unit.device)
        sims[torch.arange(len(sims), device=unit.device), rows] = -np.inf
        values[start : start + block], index[start : start + block] = sims.topk(k, dim=1)
    return values, index


def spread_vectors(
    vectors: np.ndarray, options: SpreadOptions, device: str | torch.device = "auto"
) -> tuple[np.ndarray, dict]:
    """Repel ``vectors`` (any norms, kept) from each other; returns the best iterate and its history."""
    dev = resolve_device(device)
    n = len(vectors)
    if n < 2:
        return vectors, {"iterations": 0, "max_nn_cosine": []}
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    unit = torch.from_numpy((vectors / norms).astype(np.float32)).to(dev)
    k = min(options.neighbours, n - 1)
    block = max(1, (1 << 24) // n)
    values, index = _neighbours(unit, k, block)
    best_max, best = float(values[:, 0].max()), unit.clone()
    history = [best_max]
    for _ in range(options.iterations):
        weights = torch.softmax(values / options.temperature, dim=1)
        push = (weights[:, :, None] * unit[index]).sum(dim=1)
        tangent = push - (push * unit).sum(dim=1, keepdim=True) * unit
        unit = unit - options.step * tangent
        unit = unit / unit.norm(dim=1, keepdim=True)
        values, index = _neighbours(unit, k, block)
        current = float(values[:, 0].max())
        history.append(current)
        if current < best_max:
            best_max, best = current, unit.clone()
    out = (best.cpu().numpy().astype(np.float64) * norms).astype(np.float32)
    return out, {"iterations": options.iterations, "max_nn_cosine": history}
