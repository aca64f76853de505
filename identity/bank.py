"""The identity bank: separated identity vectors, how they were drawn, and the checks they passed.

``build_bank`` runs the exact greedy acceptance: candidates are visited in the sampler's order
and kept unless their cosine to an already kept identity exceeds ``max_cosine`` or their cosine
to a gallery vector reaches ``max_gallery_cosine``. The result equals the naive one-by-one greedy
over the same candidate stream, but is computed block by block with matrix products
(see ``facesynth.separation`` for the bfloat16 screen and its exact re-check, and
``facesynth.identity.int8_screen`` for the int8 screen used on CPUs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facesynth import layout
from facesynth.errors import UserInputError
from facesynth.faces.gallery import Gallery
from facesynth.identity import SAMPLERS
from facesynth.identity.int8_screen import (
    GROUP_HEADROOM,
    Int8Keys,
    Int8Queries,
    int8_screen_available,
)
from facesynth.identity.int8_screen import resolve_in_order as resolve_in_order_int8
from facesynth.identity.options import BankOptions
from facesynth.identity.spread import spread_vectors
from facesynth.interfaces import IdentitySampler
from facesynth.registry import ComponentSpec
from facesynth.separation import (
    SAFETY,
    SCREEN_DTYPE,
    Screen,
    check_vectors,
    exact_cosine,
    nearest_neighbours,
    resolve_device,
    resolve_in_order,
    row_norms64,
    screen_against,
    unit_rows,
)

log = logging.getLogger(__name__)

BANK_FORMAT = "facesynth-identity-bank"
_BANK_SALT = 0x62616E6B  # "bank": keeps the bank's stream apart from other uses of the recipe seed
# Nearest-neighbour statistics cost as much as a second build; above this size they are left to
# ``separation_stats`` (the maximum pairwise cosine is guaranteed by construction either way).
FULL_STATS_LIMIT = 250_000
# Candidate blocks: at least MIN_BLOCK, growing as the bank grows (one candidate per BLOCK_PER_KEPT kept).
MIN_BLOCK = 1024
BLOCK_PER_KEPT = 4


class IdentityBank:
    """Identity vectors [N, D] float32 plus a JSON-able record of how they were made."""

    def __init__(self, vectors: np.ndarray, provenance: dict[str, Any] | None = None) -> None:
        vectors = np.ascontiguousarray(check_vectors(vectors, "identity bank vectors"))
        row_norms64(vectors, "identity bank vectors")
        self.vectors = vectors
        self.provenance = provenance or {}
        self._sha256: str | None = None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def sha256(self) -> str:
        """Hash of the vectors alone (shape and bytes): equal banks have equal hashes."""
        if self._sha256 is None:
            digest = hashlib.sha256(f"{self.vectors.shape}".encode())
            digest.update(self.vectors.tobytes())
            self._sha256 = digest.hexdigest()
        return self._sha256

    def save(self, path: str | Path) -> None:
        """Write a safetensors file (tensor ``vectors``, provenance in the metadata), atomically."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "format": BANK_FORMAT,
            "count": str(len(self)),
            "dim": str(self.dim),
            "sha256": self.sha256(),
            "provenance": json.dumps(self.provenance, default=str),
        }
        tmp = layout.temporary_name(path)  # unique per host and process: Slurm tasks share the folder
        try:
            save_file({"vectors": self.vectors}, str(tmp), metadata=metadata)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path) -> IdentityBank:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise UserInputError(
                f"identity bank {path} does not exist; build one with `facesynth identities`"
            )
        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
                if "vectors" not in list(f.keys()):
                    raise UserInputError(
                        f"identity bank {path} has no 'vectors' tensor (tensors: {list(f.keys())})"
                    )
                vectors = f.get_tensor("vectors")
        except UserInputError:
            raise
        except Exception as exc:
            raise UserInputError(f"identity bank {path} is not a readable safetensors file: {exc}") from None
        try:
            provenance = json.loads(metadata.get("provenance", "{}"))
        except json.JSONDecodeError:
            raise UserInputError(f"identity bank {path} has corrupt provenance metadata") from None
        return cls(check_vectors(vectors, f"identity bank {path}"), provenance)


@dataclass
class GreedyResult:
    vectors: np.ndarray
    drawn: int
    rejected_near_identity: int
    rejected_gallery: int
    gallery_screened_max: np.ndarray | None = None  # per kept vector, screened (not exact)
    indices: np.ndarray | None = None  # per kept vector, its position in the candidate stream
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class KeyGroup:
    """Int8 keys of one scale, and the kept row each of them is."""

    keys: Int8Keys
    rows: np.ndarray


class KeptVectors:
    """The accepted identities, and the question every candidate block asks of them: too close?

    Rows are kept in float32 for the exact checks. The screen runs on int8 copies where the CPU
    allows (``int8_screen``), else on bfloat16 copies.
    """

    def __init__(self, capacity: int, dim: int, device: torch.device, int8: bool) -> None:
        self.raw = np.empty((capacity, dim), dtype=np.float32)
        self.norms = np.empty(capacity, dtype=np.float64)
        self.count = 0
        self.int8 = int8 and int8_screen_available(device)
        self.groups: list[KeyGroup] = []
        # Rows screened in bfloat16: all of them without int8, else the few too coarse for it.
        self.low = torch.empty((0 if self.int8 else capacity, dim), dtype=SCREEN_DTYPE, device=device)
        self.low_rows = np.empty(0, dtype=np.int64)  # with int8: the kept row of each bfloat16 row
        self.err = 0.0  # largest bfloat16 rounding error of the rows held in bfloat16

    def add(
        self,
        x: np.ndarray,
        norms: np.ndarray,
        rows: np.ndarray,
        unit: torch.Tensor,
        screen: Callable[[], Screen],
    ) -> None:
        """Append ``x[rows]``; ``unit`` holds the block's ``unit_rows``, ``screen()`` its bfloat16 form."""
        start, stop = self.count, self.count + len(rows)
        self.raw[start:stop] = x[rows]
        self.norms[start:stop] = norms[rows]
        self.count = stop
        if len(rows) == 0:
            return
        if not self.int8:
            index = torch.from_numpy(rows).to(self.low.device)
            self.low[start:stop] = screen().low.index_select(0, index)
            self.err = max(self.err, screen().err)
            return
        part = unit.index_select(0, torch.from_numpy(rows))
        group = min((g for g in self.groups if g.keys.fits(part)), key=lambda g: g.keys.scale, default=None)
        if group is None:  # the first rows, or rows with larger entries than any group allows
            capacity = len(self.raw)
            group = KeyGroup(Int8Keys.fitting(part, capacity, GROUP_HEADROOM), np.empty(capacity, np.int64))
            self.groups.append(group)
        first = group.keys.count
        fine = group.keys.append(part)
        group.rows[first : group.keys.count] = start + np.flatnonzero(fine)
        if not fine.all():
            coarse = np.flatnonzero(~fine)
            index = torch.from_numpy(rows[coarse]).to(self.low.device)
            self.low = torch.cat([self.low, screen().low.index_select(0, index)])
            self.low_rows = np.r_[self.low_rows, start + coarse]
            self.err = max(self.err, screen().err)

    def too_close(
        self,
        x: np.ndarray,
        norms: np.ndarray,
        screen: Callable[[], Screen],
        queries: Int8Queries | None,
        threshold: float,
    ) -> np.ndarray:
        """Mask of candidates with an exact cosine above ``threshold`` to some kept row.

        ``screen()`` and ``queries`` (when ``self.int8``) are the candidates' bfloat16 and int8 forms."""
        rejected = np.zeros(len(x), dtype=bool)
        exact = exact_cosine(x, norms, self.raw, self.norms)
        for group in self.groups:
            alive = np.flatnonzero(~rejected)
            hit = group.keys.screen(queries, alive, threshold, lambda i, j, g=group: exact(i, g.rows[j]))
            rejected[alive[hit]] = True
        rows = np.flatnonzero(~rejected)
        if len(self.low) and len(rows):
            full = screen()
            sub = Screen(full.low.index_select(0, torch.from_numpy(rows).to(full.low.device)), full.err)
            index = self.low_rows if self.int8 else np.arange(self.count)
            hit, _ = screen_against(
                sub, [(0, self.low[: len(index)])], self.err, threshold, lambda i, j: exact(rows[i], index[j])
            )
            rejected[rows[hit]] = True
        return rejected


def next_block_size(kept: int, wanted: int, accepted_share: float, largest: int) -> int:
    """How many candidates to check next, for ``wanted`` more identities.

    A block costs ``kept`` products per candidate against the bank and about ``block / 2`` within
    itself, so small banks take small blocks and the in-block triangle stays a small share of the
    work. Near the end, a block is about what the ``accepted_share`` of recent candidates says is
    still needed, so the last block is not screened in full for a few identities.
    """
    size = max(min(MIN_BLOCK, largest), min(largest, kept // BLOCK_PER_KEPT))
    return min(size, int(1.1 * wanted / max(accepted_share, 0.01)) + 64)


def select_separated(
    draw: Any,
    count: int,
    max_cosine: float,
    budget: int,
    block_size: int = 8192,
    gallery: Gallery | None = None,
    max_gallery_cosine: float = 0.3,
    device: str | torch.device = "auto",
    progress: bool = False,
    int8: bool = True,
) -> GreedyResult:
    """Exact greedy acceptance over the candidate stream ``draw(n) -> float32 [<= n, D]``.

    Blocks grow with the bank up to ``block_size`` (see ``next_block_size``). ``int8``: on CPU,
    screen against int8 copies of the kept rows (``False``: bfloat16 only). Raises
    ``UserInputError`` when ``count`` is not reached within ``budget``.
    """
    from tqdm.auto import tqdm

    dev = resolve_device(device)
    near = max_cosine - SAFETY  # keep iff every exact cosine to a kept vector is <= near
    far = max_gallery_cosine - SAFETY  # reject iff some exact gallery cosine is >= far
    kept: KeptVectors | None = None
    gallery_max = np.full(count, np.nan, dtype=np.float32)
    indices = np.full(count, -1, dtype=np.int64)
    drawn = rejected_near = rejected_gallery = 0
    bar = tqdm(total=count, unit="id", disable=not progress, desc="identities")
    n_kept, accepted_share = 0, 1.0
    while n_kept < count and drawn < budget:
        size = next_block_size(n_kept, count - n_kept, accepted_share, block_size)
        x = draw(min(size, budget - drawn))
        if len(x) == 0:
            break
        x = check_vectors(x, "sampler candidates")
        if kept is None:
            kept = KeptVectors(count, x.shape[1], dev, int8)
            if gallery is not None and gallery.dim != x.shape[1]:
                raise UserInputError(
                    f"the sampler draws {x.shape[1]}-d vectors but gallery {gallery.path} holds {gallery.dim}-d ones"
                )
        norms = row_norms64(x, "sampler candidates")
        unit = unit_rows(x, norms)
        screen = cache(partial(Screen.of_unit, unit, dev))  # bfloat16 form, made only when needed
        queries = Int8Queries.of(unit) if kept.int8 else None
        reason = np.zeros(len(x), dtype=np.int8)  # 0 kept, 1 near an identity, 2 near the gallery
        reason[kept.too_close(x, norms, screen, queries, near)] = 1
        block_gallery = np.full(len(x), np.nan, dtype=np.float32)
        if gallery is not None:
            alive = np.flatnonzero(reason == 0)
            if len(alive):
                hit, screened = gallery.too_close(x[alive], far)
                reason[alive[hit]] = 2
                block_gallery[alive] = screened
        alive = np.flatnonzero(reason == 0)
        among = exact_cosine(x, norms, x, norms)
        keep = resolve_in_order_int8(unit, queries, alive, near, among) if queries is not None else None
        if keep is None:
            keep = resolve_in_order(screen(), alive, near, among)
        reason[alive[~keep]] = 1
        accepted = alive[keep][: count - n_kept]
        accepted_share = max(len(accepted), 1) / len(x)
        used = len(x) if n_kept + len(accepted) < count else int(accepted[-1]) + 1
        indices[n_kept : n_kept + len(accepted)] = drawn + accepted
        drawn += used
        rejected_near += int((reason[:used] == 1).sum())
        rejected_gallery += int((reason[:used] == 2).sum())
        kept.add(x, norms, accepted, unit, screen)
        gallery_max[n_kept : kept.count] = block_gallery[accepted]
        bar.update(len(accepted))
        n_kept = kept.count
    bar.close()
    if n_kept < count:
        cause = (
            "the sampler ran out of candidates"
            if drawn < budget
            else f"the candidate budget ({budget:,}) ran out"
        )
        raise UserInputError(
            f"reached only {n_kept:,} of {count:,} identities at max_cosine {max_cosine} "
            + (f"and max_gallery_cosine {max_gallery_cosine} " if gallery is not None else "")
            + f"after {drawn:,} candidates ({cause}; {rejected_near:,} rejected as too close to an identity, "
            f"{rejected_gallery:,} as too close to the gallery); raise max_cosine or candidate_budget, "
            "lower count, or use a broader sampler"
        )
    assert kept is not None
    return GreedyResult(
        kept.raw,
        drawn,
        rejected_near,
        rejected_gallery,
        gallery_max if gallery is not None else None,
        indices,
    )


def separation_stats(
    vectors: np.ndarray, gallery: Gallery | None = None, device: str | torch.device = "auto"
) -> dict[str, Any]:
    """Exact nearest-neighbour cosine statistics of a bank, and its largest cosine to a gallery."""
    vectors = check_vectors(vectors, "identity bank vectors")
    stats: dict[str, Any] = {"count": len(vectors), "dim": int(vectors.shape[1])}
    if len(vectors) > 1:
        nn, _ = nearest_neighbours(vectors, device)
        stats |= {
            "nn_cosine_min": float(nn.min()),
            "nn_cosine_mean": float(nn.mean()),
            "nn_cosine_max": float(nn.max()),
        }
    else:
        stats |= {"nn_cosine_min": None, "nn_cosine_mean": None, "nn_cosine_max": None}
    if gallery is not None:
        best, _ = gallery.max_cosine(vectors)
        stats["gallery_cosine_max"] = float(best.max())
    return stats


def make_sampler(spec: ComponentSpec) -> IdentitySampler:
    return SAMPLERS.create(spec.name, **spec.options)


def build_bank(options: BankOptions, seed: int, progress: bool = True) -> IdentityBank:
    """Draw, check and (optionally) spread a bank as ``options`` say; deterministic given ``seed``."""
    gallery = Gallery(options.gallery, options.device) if options.gallery else None
    thresholds = {"max_cosine": options.max_cosine}
    if gallery is not None:
        thresholds["max_gallery_cosine"] = options.max_gallery_cosine
    if options.bank is not None:
        return _check_prebuilt(options, gallery, thresholds)
    assert options.sampler is not None
    sampler = make_sampler(options.sampler)
    if gallery is not None:
        gallery.check_space(sampler.space, sampler.dim, f"identity sampler '{options.sampler.name}'")
    rng = np.random.default_rng([int(seed), _BANK_SALT])
    result = select_separated(
        lambda n: sampler.draw(n, rng),
        options.count,
        options.max_cosine,
        options.budget,
        options.block_size,
        gallery,
        options.max_gallery_cosine,
        options.device,
        progress,
    )
    vectors = result.vectors
    provenance: dict[str, Any] = {
        "sampler": options.sampler.name,
        "sampler_options": options.sampler.options,
        "seed": int(seed),
        **thresholds,
        "safety_margin": SAFETY,
        "gallery": str(options.gallery) if gallery is not None else None,
        "gallery_sha256": gallery.sha256 if gallery is not None else None,
        "gallery_size": len(gallery) if gallery is not None else None,
        "candidates_drawn": result.drawn,
        "candidates_rejected": result.drawn - options.count,
        "rejected_near_identity": result.rejected_near_identity,
        "rejected_near_gallery": result.rejected_gallery,
        "block_size": options.block_size,
    }
    if sampler.names is not None:  # the names of the candidates kept, not of the first ones drawn
        provenance["identity_names"] = [sampler.names[int(i)] for i in result.indices]
    if options.spread is not None:
        vectors, provenance["spread"] = _spread(vectors, options, gallery)
    provenance["stats"] = _bank_stats(vectors, gallery, options.device)
    return IdentityBank(vectors, provenance)


def _bank_stats(vectors: np.ndarray, gallery: Gallery | None, device: str) -> dict[str, Any]:
    if len(vectors) <= FULL_STATS_LIMIT:
        return separation_stats(vectors, gallery, device)
    return {
        "count": len(vectors),
        "dim": int(vectors.shape[1]),
        "note": f"above {FULL_STATS_LIMIT:,} identities; run separation_stats for nearest-neighbour statistics",
    }


def _spread(vectors: np.ndarray, options: BankOptions, gallery: Gallery | None) -> tuple[np.ndarray, dict]:
    """Spread, then re-check exactly; a spread bank that breaks a threshold is discarded."""
    assert options.spread is not None
    before, _ = nearest_neighbours(vectors, options.device)
    spread, history = spread_vectors(vectors, options.spread, options.device)
    after, _ = nearest_neighbours(spread, options.device)
    record = {
        **options.spread.model_dump(),
        "nn_cosine_before": {
            "min": float(before.min()),
            "mean": float(before.mean()),
            "max": float(before.max()),
        },
        "nn_cosine_after": {
            "min": float(after.min()),
            "mean": float(after.mean()),
            "max": float(after.max()),
        },
        "max_nn_cosine_per_iteration": history["max_nn_cosine"],
        "applied": True,
    }
    problem = None
    if float(after.max()) > options.max_cosine - SAFETY or float(after.max()) > float(before.max()):
        problem = "spreading did not lower the largest cosine"
    elif gallery is not None and gallery.too_close(spread, options.max_gallery_cosine - SAFETY)[0].any():
        problem = "spreading moved an identity too close to the gallery"
    if problem:
        log.warning("%s; keeping the unspread bank", problem)
        record |= {"applied": False, "reason": problem}
        return vectors, record
    return spread, record


def _check_prebuilt(options: BankOptions, gallery: Gallery | None, thresholds: dict) -> IdentityBank:
    assert options.bank is not None
    bank = IdentityBank.load(options.bank)
    if len(bank) < options.count:
        raise UserInputError(
            f"identity bank {options.bank} holds {len(bank):,} identities, fewer than count {options.count:,}"
        )
    vectors = bank.vectors[: options.count]
    stats = separation_stats(vectors, gallery, options.device)
    if stats["nn_cosine_max"] is not None and stats["nn_cosine_max"] > options.max_cosine:
        raise UserInputError(
            f"identity bank {options.bank} has two identities at cosine {stats['nn_cosine_max']:.4f} > "
            f"max_cosine {options.max_cosine}; rebuild the bank or raise max_cosine"
        )
    if gallery is not None and stats["gallery_cosine_max"] >= options.max_gallery_cosine:
        raise UserInputError(
            f"identity bank {options.bank} has an identity at cosine {stats['gallery_cosine_max']:.4f} to gallery "
            f"{gallery.path} (max_gallery_cosine {options.max_gallery_cosine}); rebuild the bank"
        )
    provenance = {
        **bank.provenance,
        "source_bank": str(options.bank),
        "source_sha256": bank.sha256(),
        **thresholds,
        "stats": stats,
    }
    return IdentityBank(vectors, provenance)
