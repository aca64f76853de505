"""An int8 screen for CPUs: exact integer products, about twice as fast as a bfloat16 screen.

Accepted identities (keys) are quantised to int8 as they are accepted, with one scale shared by
a growing group of keys (the screen compares products across keys, so they need a common scale).
Candidates (queries) are quantised with one scale per row. ``torch._int_mm`` multiplies them in
tiles small enough for the int32 products to stay in cache; from each tile only what the
decision needs is taken (rows surely above the threshold, pairs too close to call), so nothing of
size candidates x keys is ever stored.

Error bound: a unit row ``u`` is stored as ``s * q`` with integer ``q``; the residual
``r = u - s * q`` is measured for every row in float64. Integer products are exact, so for unit
rows ``|s_a s_b (q_a . q_b) - u_a . u_b| <= |r_a| + |r_b| + |r_a||r_b|`` (Cauchy-Schwarz).
Pairs whose screened cosine lies within that margin of the threshold are re-checked in float64.

Value ranges keep the integer products exact: queries ``|q| <= 127``; keys ``|q| <= 127`` where
the kernel accumulates in int32 (VNNI), ``|q| <= 64`` where it sums pairs in int16 (AVX2's
``vpmaddubsw`` after oneDNN shifts queries to uint8: ``2 * 255 * 64`` cannot saturate). Which one
applies is found by checking products of extreme values against exact integer arithmetic once per
process (``key_levels``); if neither is exact, the screen is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from facesynth.separation import ExactFn, keep_in_order

QUERY_LEVELS = 127  # queries: |q| <= 127
KEY_LEVELS_INT16 = 64  # keys on kernels with int16 pair sums (see the module docstring); else 127
# One integer product is TILE_ROWS x TILE_KEYS int32 (16 MB): small enough to stay in cache,
# which makes the GEMM plus row maximum about 1.8x faster than one large product here.
TILE_ROWS = 4096
TILE_KEYS = 1024
# Keys whose rounding error would widen the margin beyond this are not worth screening in int8
# (nearly every pair would need an exact check); the caller keeps them in bfloat16.
MAX_MARGIN = 0.08
# A new group of keys gets this much room above its first rows' largest entry, so that later rows
# from the same distribution fit in it.
GROUP_HEADROOM = 1.15


def int8_screen_available(device: torch.device) -> bool:
    """The int8 screen is for CPUs whose int8 GEMM is exact at our value ranges; GPUs use bfloat16."""
    return device.type == "cpu" and key_levels() > 0


@cache
def key_levels() -> int:
    """Largest key range ``|q| <= levels`` whose int8 products are exact on this CPU (0: none).

    127 where the kernel accumulates in int32 (VNNI), 64 where it sums pairs in int16 (AVX2).
    Checked on the extreme values, where an int16 intermediate would saturate.
    """
    if not hasattr(torch, "_int_mm"):
        return 0
    rng = np.random.default_rng(0)
    for levels in (127, KEY_LEVELS_INT16):
        for rows, cols in ((1024, 512), (3, 5)):  # a tile and a tiny product: kernels differ by shape
            a = rng.integers(-QUERY_LEVELS, QUERY_LEVELS + 1, (rows, 512))
            b = rng.integers(-levels, levels + 1, (512, cols))
            a[:2], a[2:3] = QUERY_LEVELS, -QUERY_LEVELS
            b[:, :2], b[:, 2:3] = levels, -levels
            try:
                got = torch._int_mm(torch.from_numpy(a.astype(np.int8)), torch.from_numpy(b.astype(np.int8)))
            except RuntimeError:
                return 0
            # Float64 products of these integers are exact (< 2^53) and use BLAS, unlike int64 ones.
            if not np.array_equal(got.numpy(), a.astype(np.float64) @ b.astype(np.float64)):
                break
        else:
            return levels
    return 0


def _quantise(
    unit: torch.Tensor, scale: torch.Tensor | float, levels: int
) -> tuple[torch.Tensor, np.ndarray]:
    """Int8 codes of float32 unit rows at ``scale``, and a bound on each row's residual norm."""
    q = torch.round(unit / scale).clamp_(-levels, levels)
    err = (unit - scale * q).norm(dim=1).double().numpy()
    # The float32 residual, its norm and the unit rows themselves are rounded: relative
    # (D + 2) 2^-24 for the norm, and under 1e-6 absolute for rows of norm about 1.
    return q.to(torch.int8), err * (1 + (unit.shape[1] + 2) * 2.0**-24) + 1e-6


@dataclass
class Int8Queries:
    """Candidate rows quantised with one scale per row: ``unit[i] ~ scale[i] * codes[i]``."""

    codes: torch.Tensor  # [N, D] int8
    scale: np.ndarray  # [N] float64
    err: np.ndarray  # [N] float64 residual norms

    @classmethod
    def of(cls, unit: torch.Tensor) -> Int8Queries:
        """Quantise float32 unit rows (``separation.unit_rows``)."""
        scale = (unit.abs().amax(dim=1, keepdim=True) / QUERY_LEVELS).clamp_(min=1e-30)
        codes, err = _quantise(unit, scale, QUERY_LEVELS)
        return cls(codes, scale[:, 0].double().numpy(), err)


@dataclass
class NearPairs:
    """What ``Int8Keys.scan`` found among ``rows`` (positions are into ``rows``)."""

    above: np.ndarray  # [rows] bool: surely above the threshold against some key
    row: np.ndarray  # [pairs] position of the row of a pair that may be above the threshold
    key: np.ndarray  # [pairs] position of its key
    sure: np.ndarray  # [pairs] bool: surely above


class Int8Keys:
    """Keys quantised at one shared ``scale``; rows can be appended while they fit that scale."""

    def __init__(self, scale: float, dim: int, capacity: int) -> None:
        self.scale = scale
        # Preallocated but untouched memory costs nothing until rows are appended.
        self.codes = torch.empty((capacity, dim), dtype=torch.int8)
        self.err = np.empty(capacity, dtype=np.float64)
        self.count = 0

    @classmethod
    def fitting(cls, unit: torch.Tensor, capacity: int, headroom: float = 1.0) -> Int8Keys:
        """Empty keys whose scale fits these float32 unit rows' largest entry times ``headroom``."""
        return cls(float(unit.abs().max()) * headroom / key_levels(), unit.shape[1], capacity)

    @classmethod
    def of(cls, unit: torch.Tensor) -> Int8Keys:
        """Keys for all these float32 unit rows, at the scale of their largest entry."""
        keys = cls.fitting(unit, len(unit))
        keys.append(unit, max_err=np.inf)
        return keys

    def __len__(self) -> int:
        return self.count

    def fits(self, unit: torch.Tensor) -> bool:
        return float(unit.abs().max()) <= self.scale * key_levels()

    def append(self, unit: torch.Tensor, max_err: float = MAX_MARGIN / 2) -> np.ndarray:
        """Append the rows (which must ``fit``) whose residual norm is at most ``max_err``.

        Returns the mask of rows appended; the others are too coarse in int8 for a useful margin.
        """
        codes, err = _quantise(unit, self.scale, key_levels())
        fine = err <= max_err
        n = int(fine.sum())
        self.codes[self.count : self.count + n] = codes if fine.all() else codes[torch.from_numpy(fine)]
        self.err[self.count : self.count + n] = err[fine]
        self.count += n
        return fine

    def screen(self, queries: Int8Queries, rows: np.ndarray, threshold: float, exact: ExactFn) -> np.ndarray:
        """Mask of ``queries[rows]`` with an exact cosine above ``threshold`` to some key.

        ``exact(query rows, key positions)`` gives float64 cosines for the pairs too close to call.
        """
        return self.scan(queries, rows, threshold, exact=exact).above

    def scan(
        self,
        queries: Int8Queries,
        rows: np.ndarray,
        threshold: float,
        exact: ExactFn | None = None,
        upper: bool = False,
    ) -> NearPairs:
        """Screen ``queries[rows]`` against the keys, one tile of keys at a time.

        With ``exact``, the pairs too close to call are checked after each tile, and rows found
        above drop out of later tiles. With ``upper``, the keys are these very rows in the same
        order, only pairs (i, j) with i < j count, and every pair that may be above ``threshold``
        is returned (with whether it surely is), since the caller needs them all.
        """
        n = len(rows)
        above = np.zeros(n, dtype=bool)
        found: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]] = []
        codes: torch.Tensor | None = None
        for j in range(0, self.count, TILE_KEYS):
            stop = min(self.count, j + TILE_KEYS)
            keys = self.codes[j:stop].T
            tile_err = float(self.err[j:stop].max())
            # Rows still to scan: not yet above; with ``upper``, rows before the tile's last key.
            pos = np.arange(min(n, stop - 1)) if upper else np.flatnonzero(~above)
            if len(pos) == 0:
                continue
            scale = queries.scale[rows[pos]] * self.scale
            margin = queries.err[rows[pos]] + tile_err + queries.err[rows[pos]] * tile_err + 1e-9
            # Integer bounds: a product >= low may be above the threshold, one > high surely is.
            low = _int32(np.floor((threshold - margin) / scale))
            high = _int32(np.ceil((threshold + margin) / scale))
            if codes is None or len(codes) != len(pos):  # gather again only when rows dropped out
                codes = queries.codes.index_select(0, torch.from_numpy(rows[pos]))
            unsure: list[tuple[np.ndarray, torch.Tensor]] = []
            for i in range(0, len(pos), TILE_ROWS):
                # With ``upper``, keys up to the tile's first row come before all its rows: skipped.
                first = max(j, i + 1) if upper else j
                product = torch._int_mm(codes[i : i + TILE_ROWS], keys[:, first - j :])
                if upper and i + len(product) > first:
                    # Rows first.. meet keys first.. on the diagonal: mask keys at or before the row.
                    diagonal = product[first - i : stop - i]
                    diagonal.masked_fill_(
                        _at_or_before(TILE_KEYS)[: len(diagonal), : stop - first], _INT32_MIN
                    )
                lo, hi = low[i : i + len(product)], high[i : i + len(product)]
                tile_max = product.amax(dim=1)
                sure_rows = tile_max > hi
                wanted = tile_max >= lo if upper else (tile_max >= lo) & ~sure_rows
                near = wanted.nonzero().squeeze(1)
                if len(near):
                    sub = product.index_select(0, near)
                    r, c = (sub >= lo[near, None]).nonzero(as_tuple=True)
                    p = pos[i + near[r].numpy()]
                    if upper:
                        found.append((p, c + first, sub[r, c] > hi[near[r]]))
                    else:
                        unsure.append((p, c + first))
                if not upper:
                    above[pos[i + np.flatnonzero(sure_rows.numpy())]] = True
            if unsure and exact is not None:
                p = np.concatenate([p for p, _ in unsure])
                c = torch.cat([c for _, c in unsure]).numpy()
                check = ~above[p]  # rows found surely above meanwhile need no check
                p, c = p[check], c[check]
                above[p[exact(rows[p], c) > threshold]] = True
        if not found:
            empty = np.empty(0, dtype=np.int64)
            return NearPairs(above, empty, empty, np.empty(0, dtype=bool))
        return NearPairs(
            above,
            np.concatenate([p for p, _, _ in found]),
            torch.cat([c for _, c, _ in found]).numpy(),
            torch.cat([s for _, _, s in found]).numpy(),
        )


_INT32_MIN = -(2**31)


@cache
def _at_or_before(width: int) -> torch.Tensor:
    """[width, width] mask of key c at or before row r (c <= r); sliced for smaller squares."""
    return torch.ones(width, width, dtype=torch.bool).tril()


def _int32(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.clip(values, _INT32_MIN, 2**31 - 1).astype(np.int32))


def resolve_in_order(
    unit: torch.Tensor, queries: Int8Queries, rows: np.ndarray, threshold: float, exact: ExactFn
) -> np.ndarray | None:
    """``separation.resolve_in_order`` with the in-block products in int8 (None: rows too coarse for it).

    ``unit`` and ``queries`` hold the whole candidate block; ``rows`` are the ones to resolve, in order.
    """
    if len(rows) == 0:
        return np.ones(0, dtype=bool)
    keys = Int8Keys.of(unit.index_select(0, torch.from_numpy(rows)))
    if 2 * keys.err.max() > MAX_MARGIN:
        return None
    found = keys.scan(queries, rows, threshold, upper=True)
    unsure = np.flatnonzero(~found.sure)
    hit = unsure[exact(rows[found.row[unsure]], rows[found.key[unsure]]) > threshold]
    above = np.r_[np.flatnonzero(found.sure), hit]
    return keep_in_order(len(rows), found.row[above], found.key[above])
