"""Every figure of one dataset from its cache entry: stats (JSON) plus the arrays the plots draw.

Identities are processed a block at a time from the label-sorted cache, so memory grows with the
number of identities (centroids) and images (one float per image), never with pairs.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from facesynth.report import metrics as M
from facesynth.report.cache import Entry
from facesynth.report.scan import NearestRows, nearest_and_unique

FMRS = (1e-2, 1e-3, 1e-4)
UNIQUE_THRESHOLDS = (0.3, 0.4)


@dataclass
class Options:
    mated_cap: int = 300_000  # mated pairs kept at most (a fixed-seed uniform subset beyond)
    nonmated: int = 300_000  # non-mated pairs sampled
    nonmated_images: int = 20_000  # images the non-mated pairs are drawn from
    bootstrap: int = 100  # bootstrap rounds for the 95% intervals
    seed: int = 0
    identity_block: int = 1024  # identities read from the cache at a time
    device: str = "auto"  # where the pair scans run (CUDA when torch sees one)


@dataclass
class Analysis:
    """One dataset's figures: ``stats`` goes to stats.json, ``arrays`` to the plots."""

    name: str
    stats: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    worst: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)  # dataset image indices
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each step (benchmarks)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # and its CPU time (all threads)

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start
            self.cpu_seconds[step] = self.cpu_seconds.get(step, 0.0) + time.process_time() - cpu


def verification(mated: np.ndarray, nonmated: np.ndarray, rounds: int, rng: np.random.Generator) -> dict:
    """EER, FNMR at FMR 1e-2/1e-3/1e-4 and the Fisher ratio, each with a bootstrap 95% interval."""
    m, nm = np.sort(mated), np.sort(nonmated)
    point = M.verification_sorted(m, nm, FMRS)
    draws = [
        M.verification_sorted(M.resample_sorted(m, rng), M.resample_sorted(nm, rng), FMRS)
        for _ in range(rounds)
    ]
    low, high = np.percentile(np.array(draws), [2.5, 97.5], axis=0) if rounds else (point, point)
    names = ["eer", *(f"fnmr_at_fmr_{f:.0e}" for f in FMRS), "fisher_ratio"]
    out: dict[str, Any] = {
        n: {"value": float(p), "ci95": [float(lo), float(hi)]}
        for n, p, lo, hi in zip(names, point, low, high, strict=True)
    }
    out["eer_threshold"] = M.eer_sorted(m, nm)[1]
    out["thresholds_at_fmr"] = {f"{f:.0e}": M.threshold_at_fmr(nm, f, presorted=True) for f in FMRS}
    out["mated_pairs"] = int(len(mated))
    out["nonmated_pairs"] = int(len(nonmated))
    return out


def identity_block(
    rows: np.ndarray, labels: np.ndarray, keep: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per-identity figures of a block of label-sorted rows (NaN rows skipped), identities of equal
    size batched together: (classes present, their centroids, their Vendi scores, image->centroid
    cosine per row, mated-pair cosines)."""
    ok = np.isfinite(rows).all(axis=1)
    where = np.flatnonzero(ok)
    x, lab = (rows, labels) if ok.all() else (rows[ok], labels[ok])  # no copy in the usual case
    to_centroid = np.full(len(rows), np.nan, np.float32)
    present = np.unique(lab)
    if len(present) == 0:
        return present, np.zeros((0, rows.shape[1]), np.float32), np.zeros(0), to_centroid, []
    starts = np.searchsorted(lab, present)
    sizes = np.searchsorted(lab, present, "right") - starts
    cents = np.empty((len(present), rows.shape[1]), np.float32)
    vendi = np.empty(len(present), np.float64)
    mated = []
    for n in np.unique(sizes):
        group = np.flatnonzero(sizes == n)
        index = starts[group][:, None] + np.arange(n)  # [B, n] rows of each identity
        first = int(index[0, 0])
        if index[-1, -1] - first + 1 == index.size:  # contiguous: a view, not a copy
            xs = x[first : first + index.size].reshape(len(group), n, -1)
        else:
            xs = x[index]  # [B, n, D]
        c = M.unit(xs.mean(axis=1))
        cents[group] = c
        to_centroid[where[index]] = np.einsum("bnd,bd->bn", xs, c)
        gram = np.matmul(xs, xs.transpose(0, 2, 1))  # [B, n, n]
        if n > 1:
            iu = np.triu_indices(n, k=1)
            pairs = gram[:, iu[0], iu[1]].ravel()
            mated.append(pairs[rng.random(len(pairs)) < keep] if keep < 1.0 else pairs)
        if n <= xs.shape[2]:
            vendi[group] = M.vendi_of_grams(gram.astype(np.float64) / n)
        else:
            vendi[group] = [M.vendi(v) for v in xs]
    return present, cents, vendi, to_centroid, mated


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS and torch on one thread: the report multiplies many small matrices, where a loaded machine
    makes multi-threaded BLAS up to 100x slower (threadpoolctl, from the report extra, when installed);
    the pair scans' large float32 products measured faster on one thread too on a loaded 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limits: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:
        limits = threadpool_limits(1, user_api="blas")
    try:
        with limits:
            yield
    finally:
        torch.set_num_threads(threads)


def analyse(
    entry: Entry,
    name: str,
    options: Options | None = None,
    gallery: np.ndarray | None = None,
    progress: bool = True,
) -> Analysis:
    """All figures of one dataset (``gallery``: unit [M, D] real-identity embeddings, optional)."""
    with one_blas_thread():
        return _analyse(entry, name, options or Options(), gallery, progress)


def _analyse(
    entry: Entry,
    name: str,
    o: Options,
    gallery: np.ndarray | None,
    progress: bool,
) -> Analysis:
    a = Analysis(name, {})
    rng = np.random.default_rng(o.seed)
    n, classes = len(entry), entry.classes
    valid = np.zeros(n, bool)
    to_centroid = np.full(n, np.nan, np.float32)
    cents = np.full((classes, entry.dim), np.nan, np.float32)
    counts = np.diff(entry.bounds)
    vendi = np.full(classes, np.nan, np.float32)
    # mated pairs: all of them when under the cap, else each kept with one fixed probability
    pairs_total = float(np.sum(counts * (counts - 1) / 2))
    keep = min(1.0, o.mated_cap / pairs_total) if pairs_total else 1.0
    mated: list[np.ndarray] = []
    bar = tqdm(total=classes, unit="id", desc=f"analyse {name}", disable=not progress)
    for k0 in range(0, classes, o.identity_block):
        k1 = min(classes, k0 + o.identity_block)
        r0, r1 = int(entry.bounds[k0]), int(entry.bounds[k1])
        with a.timed("read"):
            rows = entry.rows(r0, r1)
        with a.timed("identities"):
            valid[r0:r1] = np.isfinite(rows).all(axis=1)
            ks, block_cents, block_vendi, block_cos, block_mated = identity_block(
                rows, entry.labels[r0:r1], keep, rng
            )
            cents[ks], vendi[ks], to_centroid[r0:r1] = block_cents, block_vendi, block_cos
            mated += block_mated
        bar.update(k1 - k0)
    bar.close()
    present = np.isfinite(cents).all(axis=1)
    images_per_identity = np.bincount(entry.labels[valid], minlength=classes)

    # non-mated pairs from a fixed-seed sample of images
    with a.timed("nonmated"):
        valid_rows = np.flatnonzero(valid)
        sample = np.sort(rng.choice(valid_rows, min(o.nonmated_images, len(valid_rows)), replace=False))
        sample_counts = np.bincount(entry.labels[sample])
        distinct = int((len(sample) ** 2 - np.sum(sample_counts.astype(np.int64) ** 2)) // 2)
        # no more draws than there are distinct pairs: a small dataset gets a small (still fixed) sample
        nonmated = M.nonmated_pairs(entry.take(sample), entry.labels[sample], min(o.nonmated, distinct), rng)
        mated_all = np.concatenate(mated) if mated else np.zeros(0, np.float32)

    stats: dict[str, Any] = {
        "dataset": entry.meta.get("dataset"),
        "format": entry.meta.get("format"),
        "space": entry.meta.get("space"),
        "images": int(n),
        "images_with_face": int(valid.sum()),
        "identities": int(classes),
        "identities_with_face": int(present.sum()),
    }
    arrays: dict[str, np.ndarray] = {"mated": mated_all, "nonmated": nonmated}
    with a.timed("verification"):
        if len(mated_all) and len(nonmated):
            stats["verification"] = verification(mated_all, nonmated, o.bootstrap, rng)
        else:
            stats["verification"] = None

    with a.timed("separability"):
        # one exact pass over the centroid pairs: nearest other identity and both uniqueness counts
        nn, which, unique = nearest_and_unique(cents[present], UNIQUE_THRESHOLDS, o.device)
        nn = nn.astype(np.float32)
    ids = np.flatnonzero(present)
    stats["separability"] = {
        "nearest_other_centroid_cosine": M.summary(nn),
        "unique_identities": {f"{t}": unique[t] for t in UNIQUE_THRESHOLDS},
    }
    arrays["nearest_other"] = nn[np.isfinite(nn)]
    stats["consistency"] = {
        "image_to_centroid_cosine": M.summary(to_centroid),
        "identity_mean_to_centroid": M.summary(
            np.bincount(entry.labels[valid], to_centroid[valid], classes)[present]
            / np.maximum(images_per_identity[present], 1)
        ),
    }
    arrays["to_centroid"] = to_centroid[valid]
    stats["diversity"] = {
        "vendi_per_identity": M.summary(vendi),
        "images_per_identity": M.summary(images_per_identity[present].astype(np.float64)),
        **{
            k: M.summary(entry.measures[k][valid])
            for k in ("yaw", "pitch", "roll", "blur")
            if k in entry.measures
        },
    }
    stats["diversity"]["pose_note"] = pose_note(entry.meta.get("settings", {}), entry.measures, valid)
    arrays["vendi"] = vendi[present]
    arrays["images_per_identity"] = images_per_identity[present]
    for k in ("yaw", "pitch", "roll", "blur"):
        arrays[k] = entry.measures[k][valid]
    attributes = {
        k[len("attribute_") :]: v[valid] for k, v in entry.measures.items() if k.startswith("attribute_")
    }
    if attributes:
        labels = entry.meta.get("attribute_labels", {})
        stats["attributes"] = {}
        for key, values in attributes.items():
            if key in labels:
                counts_k = np.bincount(values[np.isfinite(values)].astype(int), minlength=len(labels[key]))
                stats["attributes"][key] = {labels[key][i]: int(v) for i, v in enumerate(counts_k)}
            else:
                stats["attributes"][key] = M.summary(values)
            arrays[f"attribute_{key}"] = values

    worst: dict[str, list[tuple[int, ...]]] = {}
    order = np.argsort(np.where(valid, to_centroid, np.inf))[:6]
    worst["lowest intra-class cosine"] = [
        (int(entry.index[r]), int(entry.index[entry.bounds[entry.labels[r]]]), float(to_centroid[r]))
        for r in order
        if valid[r]
    ]
    if len(nn) > 1:
        top = np.argsort(-nn)[:6]
        worst["closest impostor identities"] = [
            (
                int(entry.index[entry.bounds[ids[i]]]),
                int(entry.index[entry.bounds[ids[which[i]]]]),
                float(nn[i]),
            )
            for i in top
        ]
    if gallery is not None:
        with a.timed("leakage"):
            stats["leakage"], arrays["leak_identity"], arrays["leak_image"], leaks = leakage(
                entry, cents, present, valid, gallery, nonmated, o
            )
        worst["closest gallery matches"] = leaks
    a.stats, a.arrays, a.worst = stats, arrays, worst
    return a


def pose_note(settings: dict[str, Any], measures: dict[str, np.ndarray], valid: np.ndarray) -> str:
    """One sentence on how head pose was measured here, or why it is absent."""
    yaw = measures["yaw"][valid] if "yaw" in measures else np.zeros(0)
    measured, images = int(np.isfinite(yaw).sum()), int(valid.sum())
    if not settings.get("aligned"):
        return f"from the five landmarks the detector found (solvePnP): {measured} of {images} images"
    if settings.get("detector") == "none":
        return "not measured: the images are aligned crops (--aligned) and --detector none ran no detector on them"
    if measured == 0:
        return "not measured: the detector found no face in any of the aligned crops"
    return (
        f"yaw and pitch from the landmarks the detector found on the aligned crops ({measured} of "
        f"{images} images); roll is unknown: aligning removed it"
    )


def leakage(
    entry: Entry,
    cents: np.ndarray,
    present: np.ndarray,
    valid: np.ndarray,
    gallery: np.ndarray,
    nonmated: np.ndarray,
    o: Options,
) -> tuple[dict, np.ndarray, np.ndarray, list[tuple[int, ...]]]:
    """Best gallery match per identity (centroid) and per image; shares above FMR-calibrated thresholds.

    Exact float64 best matches from tiled float32 scans (``scan.NearestRows``): memory is bounded by
    the tiles and a block of images, whatever the gallery's size.
    """
    real = np.flatnonzero(np.isfinite(gallery).all(axis=1))  # a gallery dataset's faceless identities: none
    scan = NearestRows(gallery[real], o.device)
    per_identity = scan.best(cents[present])[0].astype(np.float32)
    per_image = np.full(len(entry), np.nan, np.float32)
    gallery_of_image = np.full(len(entry), -1, np.int64)
    for r0 in range(0, len(entry), 65536):
        r1 = min(len(entry), r0 + 65536)
        ok = valid[r0:r1]
        if ok.any():
            best, which = scan.best(entry.rows(r0, r1)[ok])
            per_image[r0:r1][ok] = best
            gallery_of_image[r0:r1][ok] = real[which]
    img = per_image[valid]
    thresholds = {f"fmr_{f:.0e}": M.threshold_at_fmr(nonmated, f) for f in FMRS} if len(nonmated) else {}
    thresholds["fixed_0.3"] = 0.3
    stats = {
        "gallery_size": len(scan),
        "identity_best_match": M.summary(per_identity),
        "image_best_match": M.summary(img),
        "thresholds": thresholds,
        "share_identities_above": {k: float(np.mean(per_identity >= t)) for k, t in thresholds.items()},
        "share_images_above": {k: float(np.mean(img >= t)) for k, t in thresholds.items()},
        # a random impostor passes threshold(FMR) with probability FMR; against M gallery identities
        # at least one does with probability 1 - (1 - FMR)^M: what a share must be compared with
        "chance_share_per_identity": {f"fmr_{f:.0e}": float(1 - (1 - f) ** len(scan)) for f in FMRS},
        "tail": sorted((float(v) for v in per_identity), reverse=True)[:20],
    }
    rows = np.flatnonzero(valid)
    top = rows[np.argsort(-per_image[rows])[:6]]
    leaks = [(int(entry.index[r]), int(gallery_of_image[r]), float(per_image[r])) for r in top]
    return stats, per_identity, img, leaks


# ----------------------------------------------------------------------------- facesynth outputs


def is_facesynth_output(path: Path) -> bool:
    return (path / "stats.json").is_file() and (path / "identities.parquet").is_file()


def reason_kind(reason: str) -> str:
    """A rejection reason without its numbers ("blur 203 < 215" -> "blur # < #"), to count by kind."""
    return re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", reason or "unknown")


def facesynth_figures(path: Path, entry: Entry, analysis: Analysis) -> None:
    """Filter funnel, rejection reasons, realised vs requested separation and image->conditioning cosine."""
    import pyarrow.parquet as pq

    from facesynth import layout

    stats = layout.read_json(path / layout.STATS)
    funnel = {
        "images_generated": stats.get("images_generated"),
        "rejected_by": stats.get("rejected_by", {}),
        "images_kept": stats.get("images_kept"),
        "identities_planned": stats.get("identities_planned"),
        "identities_kept": stats.get("identities_kept"),
        "identities_dropped": stats.get("identities_dropped"),
    }
    reasons: dict[str, int] = {}
    if (path / layout.REJECTED).is_file():
        table = pq.read_table(path / layout.REJECTED, columns=["rejected_by", "reason"]).to_pylist()
        for row in table:
            key = f"{row['rejected_by']}: {reason_kind(row['reason'])}"
            reasons[key] = reasons.get(key, 0) + 1
    funnel["reasons"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
    analysis.stats["funnel"] = funnel

    identities = pq.read_table(path / layout.IDENTITIES, columns=["label", "vector"]).to_pylist()
    vectors = {str(r["label"]): r["vector"] for r in identities if r["label"] is not None and r["vector"]}
    names = entry.meta["identity_names"]
    if not all(name in vectors for name in names):
        return
    bank = M.unit(np.array([vectors[name] for name in names], np.float32))
    requested = (stats.get("identity_bank") or {}).get("max_cosine")
    bank_nn = nearest_and_unique(bank)[0].astype(np.float32)
    analysis.stats["separation_requested_vs_realised"] = {
        "requested_max_cosine": requested,
        "bank_nearest_other_cosine": M.summary(bank_nn),
        "embedding_nearest_other_centroid_cosine": analysis.stats["separability"][
            "nearest_other_centroid_cosine"
        ],
    }
    analysis.arrays["bank_nn"] = bank_nn
    if bank.shape[1] == entry.dim:
        # only meaningful when the report's embedder is the generator's conditioning space
        cos = np.full(len(entry), np.nan, np.float32)
        for r0 in range(0, len(entry), 65536):
            r1 = min(len(entry), r0 + 65536)
            cos[r0:r1] = np.einsum("ij,ij->i", entry.rows(r0, r1), bank[entry.labels[r0:r1]])
        analysis.stats["consistency"]["image_to_conditioning_cosine"] = M.summary(cos)
        analysis.arrays["to_conditioning"] = cos[np.isfinite(cos)]
