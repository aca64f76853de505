"""Exact cosine checks at scale: a bfloat16 screen with a proven error bound, re-checked in float64.

Every decision here ("is this pair above the threshold?", "which row is the nearest?") is exact
with respect to float64 cosines of the stored float32 vectors. Matrix products run in bfloat16
(fast on CPUs with AVX512-BF16 and on GPUs); any pair whose screened value lies within the
screen's worst-case error of the decision level is recomputed in float64.

The screen's error bound: with unit rows ``x``, ``y`` rounded to bfloat16 as ``x + dx``, ``y + dy``,
``|(x + dx).(y + dy) - x.y| <= |dx| + |dy| + |dx||dy|`` (Cauchy-Schwarz), plus float32 accumulation
(``<= (D + 2) 2^-24`` for unit rows) and the final rounding of the product to bfloat16
(relative ``2^-8``). ``|dx|`` is measured for every row, so the bound is tight (about 0.005).
Float32 accumulation is enforced: every screen runs inside ``fp32_accumulation``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from facesynth.errors import UserInputError

# Accepted pairs stay this far below a threshold, so re-checks in float32 by users agree with ours.
SAFETY = 1e-5
SCREEN_DTYPE = torch.bfloat16
_BF16_UNIT_ROUNDOFF = 2.0**-8
_FP32_UNIT_ROUNDOFF = 2.0**-24
# Elements of one screened product (64 MB in bfloat16): large enough for fast GEMMs, small in memory.
PRODUCT_ELEMENTS = 1 << 25
_EXACT_PAIRS_PER_CHUNK = 1 << 15
STRIP = 1024

ExactFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


_accumulation_lock = threading.Lock()
_accumulation_depth = 0
_accumulation_saved = True


@contextlib.contextmanager
def fp32_accumulation() -> Iterator[None]:
    """bfloat16 matrix products inside accumulate in float32, as the screen's error bound assumes.

    On CUDA torch lets cuBLAS reduce bfloat16 products in reduced precision by default
    (``torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction``); this turns it off and
    restores the caller's setting when the last of (possibly nested or concurrent) screens ends.
    """
    global _accumulation_depth, _accumulation_saved
    matmul = torch.backends.cuda.matmul
    with _accumulation_lock:
        if _accumulation_depth == 0:
            _accumulation_saved = matmul.allow_bf16_reduced_precision_reduction
            matmul.allow_bf16_reduced_precision_reduction = False
        _accumulation_depth += 1
    try:
        yield
    finally:
        with _accumulation_lock:
            _accumulation_depth -= 1
            if _accumulation_depth == 0:
                matmul.allow_bf16_reduced_precision_reduction = _accumulation_saved


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserInputError(
            "device 'cuda' was requested but torch sees no CUDA GPU; use device: cpu or auto"
        )
    if device not in ("cpu", "cuda"):
        raise UserInputError(f"unknown device '{device}'; use auto, cpu or cuda")
    return torch.device(device)


def check_vectors(vectors: np.ndarray, what: str = "vectors", dim: int | None = None) -> np.ndarray:
    """Return ``vectors`` as a float32 [N, D] array (no copy when possible) or raise a clear error."""
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise UserInputError(f"{what} must be a 2-D array [count, dim], got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise UserInputError(f"{what} is empty (shape {array.shape})")
    if dim is not None and array.shape[1] != dim:
        raise UserInputError(f"{what} have dimension {array.shape[1]}, expected {dim}")
    if not np.issubdtype(array.dtype, np.floating):
        raise UserInputError(f"{what} must hold floating-point numbers, got dtype {array.dtype}")
    if array.dtype != np.float32:
        array = array.astype(np.float32)
    return array


def row_norms64(vectors: np.ndarray, what: str = "vectors", block: int = 65536) -> np.ndarray:
    """Float64 row norms, read in blocks (works on memory maps); NaN, infinite or zero rows are errors."""
    norms = np.empty(vectors.shape[0], dtype=np.float64)
    for start in range(0, vectors.shape[0], block):
        rows = np.asarray(vectors[start : start + block])
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            raise UserInputError(
                f"{what} row {start + int(np.argmax(bad))} contains NaN or infinite values; remove or fix it"
            )
        # Squares and sums in float64, without a float64 copy of the rows.
        norms[start : start + len(rows)] = np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))
    if (norms == 0).any():
        raise UserInputError(f"{what} row {int(np.argmax(norms == 0))} is all zeros and has no direction")
    return norms


@dataclass
class Screen:
    """Rows prepared for the screen: unit rows in bfloat16 and the largest rounding-error norm."""

    low: torch.Tensor  # [N, D] bfloat16 unit rows on the device
    err: float

    @classmethod
    def of(cls, vectors: np.ndarray, norms: np.ndarray, device: torch.device, block: int = 65536) -> Screen:
        low = torch.empty(vectors.shape, dtype=SCREEN_DTYPE, device=device)
        err = 0.0
        for start in range(0, vectors.shape[0], block):
            part = cls.of_unit(
                unit_rows(vectors[start : start + block], norms[start : start + block]), device
            )
            low[start : start + len(part.low)] = part.low
            err = max(err, part.err)
        return cls(low, err)

    @classmethod
    def of_unit(cls, unit: torch.Tensor, device: torch.device) -> Screen:
        """The screen of float32 unit rows (``unit_rows``)."""
        high = unit.to(device)
        low = high.to(SCREEN_DTYPE)
        err = float((low.float() - high).norm(dim=1).max())
        # 1e-6 covers the float32 unit rows (not exactly unit) and the error norm's own rounding.
        return cls(low, err + 1e-6)


def unit_rows(vectors: np.ndarray, norms: np.ndarray) -> torch.Tensor:
    """Rows times their reciprocal float64 norms, in float32 (a CPU tensor; within 2^-22 of unit rows)."""
    rows = torch.from_numpy(np.require(vectors, dtype=np.float32, requirements="W"))  # copies read-only maps
    return rows * torch.from_numpy(1.0 / norms).float()[:, None]


def screen_margin(err_a: float, err_b: float, dim: int, level: float | None = None) -> float:
    """Worst-case |screened - exact| cosine near ``level`` (anywhere in [-1, 1] when ``level`` is None)."""
    inputs = err_a + err_b + err_a * err_b + (dim + 2) * _FP32_UNIT_ROUNDOFF * (1 + err_a) * (1 + err_b)
    size = 1.0 + inputs if level is None else abs(level) + inputs
    return inputs + _BF16_UNIT_ROUNDOFF * size


def bf16_floor(value: float) -> float:
    """Largest bfloat16 <= value: comparing bfloat16 tensors with Python floats rounds the float."""
    t = torch.tensor([value], dtype=torch.float64).to(SCREEN_DTYPE)
    if float(t) > value:
        t = torch.nextafter(t, torch.tensor([-np.inf], dtype=SCREEN_DTYPE))
    return float(t)


def bf16_ceil(value: float) -> float:
    """Smallest bfloat16 >= value."""
    t = torch.tensor([value], dtype=torch.float64).to(SCREEN_DTYPE)
    if float(t) < value:
        t = torch.nextafter(t, torch.tensor([np.inf], dtype=SCREEN_DTYPE))
    return float(t)


def exact_cosine(a: np.ndarray, a_norms: np.ndarray, b: np.ndarray, b_norms: np.ndarray) -> ExactFn:
    """Float64 cosines of pairs ``(a[i], b[j])``, gathered in chunks (``b`` may be a memory map)."""

    def cosines(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        out = np.empty(len(i), dtype=np.float64)
        for start in range(0, len(i), _EXACT_PAIRS_PER_CHUNK):
            ii, jj = i[start : start + _EXACT_PAIRS_PER_CHUNK], j[start : start + _EXACT_PAIRS_PER_CHUNK]
            order = np.argsort(jj, kind="stable")  # sorted reads are kinder to memory maps
            rows_b = np.empty((len(jj), b.shape[1]), dtype=b.dtype)
            rows_b[order] = b[jj[order]]
            # Products of two float32 numbers are exact in float64, and so summed in float64.
            dots = np.einsum("ij,ij->i", a[ii], rows_b, dtype=np.float64)
            out[start : start + len(ii)] = dots / (a_norms[ii] * b_norms[jj])
        return out

    return cosines


def _column_chunks(keys: Iterable[tuple[int, torch.Tensor]], rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    width = max(1024, PRODUCT_ELEMENTS // max(rows, 1))
    for offset, block in keys:
        for start in range(0, block.shape[0], width):
            yield offset + start, block[start : start + width]


@fp32_accumulation()
def screen_against(
    queries: Screen,
    keys: Iterable[tuple[int, torch.Tensor]],
    key_err: float,
    threshold: float,
    exact: ExactFn,
    strict: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Which queries have a key with exact cosine above ``threshold`` (``>=`` when not ``strict``).

    ``keys`` yields ``(offset, bfloat16 unit rows)``. Returns the boolean mask of such queries and,
    for the others, the largest screened cosine (an upper bound within the margin, for statistics).
    Rejected queries drop out of later key blocks, so heavy rejection makes the scan cheaper.
    """
    n, dim = queries.low.shape
    device = queries.low.device
    margin = screen_margin(queries.err, key_err, dim, threshold)
    low_cut, high_cut = bf16_floor(threshold - margin), bf16_ceil(threshold + margin)
    rejected = torch.zeros(n, dtype=torch.bool, device=device)
    best = torch.full((n,), -np.inf, dtype=torch.float32, device=device)
    active = torch.arange(n, device=device)
    active_low = queries.low
    for offset, block in _column_chunks(keys, n):
        if len(active) == 0:
            break
        product = active_low @ block.T
        row_max = product.amax(dim=1)
        best[active] = torch.maximum(best[active], row_max.float())
        rejected[active[row_max > high_cut]] = True  # beyond any rounding: no float64 check needed
        unsure = ((row_max >= low_cut) & (row_max <= high_cut)).nonzero().squeeze(1)
        if len(unsure):
            sub = product.index_select(0, unsure)
            r, c = (sub >= low_cut).nonzero(as_tuple=True)
            qi = active[unsure[r]].cpu().numpy()
            cos = exact(qi, (c + offset).cpu().numpy())
            hit = cos > threshold if strict else cos >= threshold
            rejected[torch.from_numpy(np.unique(qi[hit])).to(device)] = True
        keep = ~rejected[active]
        if not bool(keep.all()):
            active = active[keep]
            active_low = queries.low.index_select(0, active)
    mask = rejected.cpu().numpy()
    best_np = best.cpu().numpy()
    best_np[mask] = np.nan
    return mask, best_np


@fp32_accumulation()
def resolve_in_order(screen: Screen, rows: np.ndarray, threshold: float, exact: ExactFn) -> np.ndarray:
    """Sequential greedy among ``rows`` (in order): keep a row unless it is above ``threshold`` to a kept one.

    Returns the kept mask over ``rows``.
    """
    s = len(rows)
    if s == 0:
        return np.ones(0, dtype=bool)
    dim = screen.low.shape[1]
    margin = screen_margin(screen.err, screen.err, dim, threshold)
    low_cut = bf16_floor(threshold - margin)
    high_cut = bf16_ceil(threshold + margin)
    device = screen.low.device
    idx = torch.from_numpy(rows).to(device)
    low = screen.low.index_select(0, idx)
    pairs_i, pairs_j = [], []
    # Strips of at most STRIP rows: the triangle costs about half the square even for small blocks.
    strip = min(s, STRIP, max(1, PRODUCT_ELEMENTS // s))
    earlier = torch.ones(strip, strip, dtype=torch.bool, device=device).tril()
    for start in range(0, s, strip):
        n = min(s, start + strip) - start
        # Pairs (i, j) with i < j: row j is checked against the earlier row i, so only columns
        # from ``start`` on are computed, and the square's lower triangle is masked.
        gram = low[start : start + n] @ low[start:].T
        gram[:, :n].masked_fill_(earlier[:n, :n], -np.inf)
        i, j = (gram >= low_cut).nonzero(as_tuple=True)
        sure = (gram[i, j] > high_cut).cpu().numpy()
        i_np, j_np = i.cpu().numpy() + start, j.cpu().numpy() + start
        pairs_i.append(i_np[sure])
        pairs_j.append(j_np[sure])
        ui, uj = i_np[~sure], j_np[~sure]
        if len(ui):
            hit = exact(rows[ui], rows[uj]) > threshold
            pairs_i.append(ui[hit])
            pairs_j.append(uj[hit])
    return keep_in_order(s, np.concatenate(pairs_i), np.concatenate(pairs_j))


def keep_in_order(count: int, pi: np.ndarray, pj: np.ndarray) -> np.ndarray:
    """Sequential greedy over ``count`` rows given the pairs ``(pi[k] < pj[k])`` above the threshold.

    A row is kept unless an earlier kept row is paired with it. Returns the kept mask.
    """
    kept = np.ones(count, dtype=bool)
    if len(pi):
        order = np.lexsort((pj, pi))
        pi, pj = pi[order], pj[order]
        starts = np.flatnonzero(np.r_[True, pi[1:] != pi[:-1]])
        ends = np.r_[starts[1:], len(pi)]
        for a, b in zip(starts, ends, strict=True):
            if kept[pi[a]]:  # a rejected row blocks nothing
                kept[pj[a:b]] = False
    return kept


class WindowMax:
    """Exact per-row maximum (and argmax) over screened blocks.

    Per row, keeps every screened entry within twice the margin of the running screened maximum;
    the true maximum is always among them, and they are re-checked in float64 at the end.
    """

    def __init__(self, rows: int, margin: float, device: torch.device) -> None:
        self.best = torch.full((rows,), -np.inf, dtype=torch.float32, device=device)
        self.window = 2 * margin
        self.rows: list[torch.Tensor] = []
        self.cols: list[torch.Tensor] = []
        self.vals: list[torch.Tensor] = []
        self.stored = 0

    def add(self, product: torch.Tensor, row_offset: int, col_offset: int) -> None:
        """Add a screened block whose row r is row ``row_offset + r`` and column c key ``col_offset + c``."""
        n = product.shape[0]
        block_max = product.amax(dim=1).float()
        best = torch.maximum(self.best[row_offset : row_offset + n], block_max)
        self.best[row_offset : row_offset + n] = best
        floor = best - self.window
        need = (block_max >= floor).nonzero().squeeze(1)
        if len(need) == 0:
            return
        sub = product.index_select(0, need).float()
        r, c = (sub >= floor[need, None]).nonzero(as_tuple=True)
        self.rows.append(need[r] + row_offset)
        self.cols.append(c + col_offset)
        self.vals.append(sub[r, c])
        self.stored += len(r)
        if self.stored > 1 << 24:
            self._prune()

    def _prune(self) -> None:
        if not self.rows:
            return
        rows, cols, vals = torch.cat(self.rows), torch.cat(self.cols), torch.cat(self.vals)
        keep = vals >= self.best[rows] - self.window
        self.rows, self.cols, self.vals = [rows[keep]], [cols[keep]], [vals[keep]]
        self.stored = int(keep.sum())

    def finish(self, exact: ExactFn) -> tuple[np.ndarray, np.ndarray]:
        """Float64 maximum and argmax per row (NaN and -1 for rows that saw no keys)."""
        n = len(self.best)
        best = np.full(n, np.nan)
        arg = np.full(n, -1, dtype=np.int64)
        self._prune()
        if not self.rows:
            return best, arg
        rows, cols = self.rows[0].cpu().numpy(), self.cols[0].cpu().numpy()
        cos = exact(rows, cols)
        order = np.lexsort((cols, -cos, rows))  # per row: highest cosine first, lowest index on ties
        rows, cols, cos = rows[order], cols[order], cos[order]
        first = np.r_[True, rows[1:] != rows[:-1]]
        best[rows[first]] = cos[first]
        arg[rows[first]] = cols[first]
        return best, arg


@fp32_accumulation()
def nearest_neighbours(
    vectors: np.ndarray, device: str | torch.device = "auto", block: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Exact float64 cosine to, and index of, each row's nearest other row (symmetric blocks)."""
    vectors = check_vectors(vectors)
    dev = resolve_device(device)
    norms = row_norms64(vectors)
    screen = Screen.of(vectors, norms, dev)
    n, dim = vectors.shape
    tracker = WindowMax(n, screen_margin(screen.err, screen.err, dim), dev)
    for i in range(0, n, block):
        a = screen.low[i : i + block]
        for j in range(i, n, block):
            product = a @ screen.low[j : j + block].T
            if i == j:
                product.diagonal().fill_(-np.inf)
            tracker.add(product, i, j)
            if j != i:
                tracker.add(product.T, j, i)
    return tracker.finish(exact_cosine(vectors, norms, vectors, norms))
