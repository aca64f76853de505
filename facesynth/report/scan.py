"""Exact nearest rows at scale: float32 tiles with a proven error margin, float64 re-checks.

Two scans serve the report's quadratic figures:

- ``nearest_and_unique``: one pass over the upper triangle of tiles of the identity centroids gives
  every row's nearest other row (each tile serves both directions) and the greedy uniqueness
  counts at every threshold (column blocks in order: a block's rows are decided against the kept
  rows of the blocks before it, then among themselves). The old code scanned the full square once
  for the nearest rows and a growing triangle once per threshold: about 4x the products.
- ``NearestRows.best``: each query's closest gallery row, tiled over queries and gallery with a
  running top-1, so memory is bounded by the tiles, never queries x gallery.

Products run in float32 on the device (CUDA when torch sees one). The identity stage's bfloat16
and int8 screens (``facesynth.separation``, ``int8_screen``) are the fast path on CPUs with
bfloat16 / VNNI units, but on an AVX2-only CPU they measured 10x (bfloat16) and 25x (int8) slower
than float32 GEMMs, so the report keeps float32 and reuses their exact parts: the running top-1
window (``WindowMax``, fed here without row gathers), float64 pair checks (``exact_cosine``) and the
in-order greedy (``keep_in_order``).

Exact means: values and decisions equal float64 cosines of the float32 rows (lowest index on a
tie). Bound: for float32 rows x, y of norms <= n, any float32 summation order (blocked, FMA, split)
gives |fl(x.y) - x.y| <= gamma_D |x||y| with gamma_D = D u / (1 - D u), u = 2^-24; dividing by the
float64 norms moves x.y by at most n^2 max|1 - 1/(|x||y|)|. Screened values within that margin of a
threshold are re-checked in float64; the top-1 keeps every value within twice the margin of the
running maximum and re-checks those.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import cache

import numpy as np
import torch

from facesynth.separation import (
    ExactFn,
    WindowMax,
    exact_cosine,
    keep_in_order,
    resolve_device,
    row_norms64,
)

TILE = 2048  # rows of a tile: a TILE x TILE float32 product is 16 MB
_UNIT_ROUNDOFF = 2.0**-24


def float32_margin(dim: int, norms: np.ndarray) -> float:
    """Worst-case |float32 product - float64 cosine| for rows whose float64 norms are ``norms``."""
    gamma = dim * _UNIT_ROUNDOFF / (1 - dim * _UNIT_ROUNDOFF)
    high, low = float(norms.max()) ** 2, float(norms.min()) ** 2
    rescale = max(abs(1 - 1 / high), abs(1 - 1 / low))
    # 1e-6: thresholds rounded to float32 when compared with float32 tensors, and this sum's rounding
    return high * (gamma + rescale) + 1e-6


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Float32 products really in float32 (no TF32 on CUDA), as the margin assumes."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


class RunningTop(WindowMax):
    """``separation.WindowMax`` fed without copies: the window is applied to the whole product (one
    compare) instead of gathering the rows that need it, and columns are added without a transposed
    view. The same entries are kept (all within the window of the running maximum), so ``finish``
    gives the same exact maxima."""

    def add(
        self, product: torch.Tensor, row_offset: int, col_offset: int, top: torch.Tensor | None = None
    ) -> None:
        """Rows of ``product`` are rows ``row_offset..``; ``top`` is its row maximum when known."""
        self._add(product, row_offset, col_offset, product.amax(dim=1) if top is None else top, 1)

    def add_columns(self, product: torch.Tensor, row_offset: int, col_offset: int, top: torch.Tensor) -> None:
        """The columns of ``product`` are rows ``col_offset..``, its rows keys ``row_offset..``;
        ``top`` is its column maximum."""
        self._add(product, col_offset, row_offset, top, 0)

    def _add(self, product: torch.Tensor, offset: int, key_offset: int, top: torch.Tensor, dim: int) -> None:
        n = len(top)
        best = torch.maximum(self.best[offset : offset + n], top)
        self.best[offset : offset + n] = best
        floor = best - self.window
        near = product >= (floor[:, None] if dim == 1 else floor[None, :])
        r, c = near.nonzero(as_tuple=True)
        values = product[r, c]
        rows, keys = (r, c) if dim == 1 else (c, r)
        self.rows.append(rows + offset)
        self.cols.append(keys + key_offset)
        self.vals.append(values)
        self.stored += len(r)
        if self.stored > 1 << 24:
            self._prune()


class NearestRows:
    """Float32 rows on the device, their float64 norms; ``best`` finds each query's closest row."""

    def __init__(self, vectors: np.ndarray, device: str | torch.device = "auto", tile: int = TILE) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.norms = row_norms64(self.vectors, "vectors")
        self.device = resolve_device(device)
        self.rows = torch.from_numpy(self.vectors).to(self.device)
        self.tile = tile

    def __len__(self) -> int:
        return len(self.vectors)

    def best(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float64 cosine to, and index of, each query's closest row (lowest index on a tie)."""
        if len(queries) == 0 or len(self) == 0:
            return np.full(len(queries), np.nan), np.full(len(queries), -1, np.int64)
        q = NearestRows(queries, self.device, self.tile)
        tracker = WindowMax(
            len(q), float32_margin(q.vectors.shape[1], np.r_[q.norms, self.norms]), self.device
        )
        with full_float32():
            for i in range(0, len(q), self.tile):
                a = q.rows[i : i + self.tile]
                for j in range(0, len(self), self.tile):
                    tracker.add(a @ self.rows[j : j + self.tile].T, i, j)
        return tracker.finish(exact_cosine(q.vectors, q.norms, self.vectors, self.norms))


def nearest_and_unique(
    vectors: np.ndarray,
    thresholds: Sequence[float] = (),
    device: str | torch.device = "auto",
    tile: int = TILE,
) -> tuple[np.ndarray, np.ndarray, dict[float, int]]:
    """(cosine to and index of each row's nearest other row, {threshold: unique rows}), one pass.

    Unique rows at ``t``: a greedy pass in row order keeps a row unless its cosine to a row already
    kept reaches ``t`` (DCFace's 0.3 and Vec2Face's 0.4 on identity centroids).
    """
    rows = NearestRows(vectors, device, tile)
    n, dim = rows.vectors.shape
    if n < 2:
        return np.full(n, np.nan), np.full(n, -1, np.int64), {t: n for t in thresholds}
    margin = float32_margin(dim, rows.norms)
    exact = exact_cosine(rows.vectors, rows.norms, rows.vectors, rows.norms)
    tracker = RunningTop(n, margin, rows.device)
    kept = {t: np.ones(n, dtype=bool) for t in thresholds}
    with full_float32():
        for j in range(0, n, tile):
            columns = rows.rows[j : j + tile]
            for i in range(0, j + 1, tile):  # the blocks before j, then j itself (its own greedy needs them)
                product = rows.rows[i : i + tile] @ columns.T
                if i == j:
                    product.fill_diagonal_(-np.inf)
                    tracker.add(product, i, j)
                    for t in thresholds:
                        _resolve_diagonal(product, j, t, margin, exact, kept[t])
                else:
                    column_top = product.amax(dim=0)
                    tracker.add(product, i, j)
                    tracker.add_columns(product, i, j, column_top)
                    for t in thresholds:
                        _drop_by_earlier(product, i, j, t, margin, exact, kept[t], column_top)
    cos, which = tracker.finish(exact)
    return cos, which, {t: int(k.sum()) for t, k in kept.items()}


def _drop_by_earlier(
    product: torch.Tensor,
    i: int,
    j: int,
    t: float,
    margin: float,
    exact: ExactFn,
    kept: np.ndarray,
    column_top: torch.Tensor,
) -> None:
    """Drop the columns (rows ``j..``) at cosine >= ``t`` to a kept row ``i..`` (an earlier, decided block).

    ``column_top``: the product's column maximum over all its rows, an upper bound for the kept ones.
    """
    if not bool((column_top >= t - margin).any()):
        return  # the usual case: no column comes near the threshold
    alive = np.flatnonzero(kept[i : i + product.shape[0]])
    if len(alive) == 0:
        return
    sub = product if len(alive) == product.shape[0] else product[torch.from_numpy(alive).to(product.device)]
    top = sub.amax(dim=0)
    sure = (top >= t + margin).cpu().numpy()
    kept[j + np.flatnonzero(sure)] = False
    unsure = ((top >= t - margin) & (top < t + margin)).nonzero().squeeze(1)
    if len(unsure):
        r, c = (sub[:, unsure] >= t - margin).nonzero(as_tuple=True)
        pi, pj = i + alive[r.cpu().numpy()], j + unsure[c].cpu().numpy()
        kept[np.unique(pj[exact(pi, pj) >= t])] = False


def _resolve_diagonal(
    product: torch.Tensor, j: int, t: float, margin: float, exact: ExactFn, kept: np.ndarray
) -> None:
    """The greedy among rows ``j..`` (a diagonal tile) once the earlier blocks have dropped theirs."""
    b = product.shape[0]
    r, c = ((product >= t - margin) & _upper(b, product.device)).nonzero(as_tuple=True)
    if len(r) == 0:
        return
    values = product[r, c].cpu().numpy()
    r, c = r.cpu().numpy(), c.cpu().numpy()
    above = values >= t + margin
    unsure = np.flatnonzero(~above)
    above[unsure] = exact(j + r[unsure], j + c[unsure]) >= t
    r, c = r[above], c[above]
    first = kept[j + r]  # a row already dropped by an earlier block blocks nothing
    kept[j : j + b] &= keep_in_order(b, r[first], c[first])


@cache
def _upper_cpu(b: int) -> torch.Tensor:
    return torch.ones(b, b, dtype=torch.bool).triu(1)


def _upper(b: int, device: torch.device) -> torch.Tensor:
    """[b, b] mask of pairs (i, j) with i < j."""
    return _upper_cpu(b).to(device)
