"""The report's figures as PNG files (matplotlib, Agg backend): every dataset on the same axes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facesynth.errors import UserInputError
from facesynth.report.analyse import FMRS, Analysis

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserInputError(
            "facesynth report draws with matplotlib: pip install 'facesynth[report]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _hist(ax, values: np.ndarray, bins: np.ndarray, colour: str, label: str, style: str = "-") -> None:
    values = values[np.isfinite(values)]
    if len(values):
        ax.hist(
            values,
            bins=bins,
            density=True,
            histtype="step",
            color=colour,
            linestyle=style,
            label=label,
            lw=1.5,
        )


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _cosine_bins(arrays: Sequence[np.ndarray]) -> np.ndarray:
    finite = [a[np.isfinite(a)] for a in arrays if len(a)]
    finite = [a for a in finite if len(a)]
    low = min((float(a.min()) for a in finite), default=-1.0)
    return np.linspace(min(low, 0.0) - 0.02, 1.0, 61)


def verification(analyses: Sequence[Analysis], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = _cosine_bins([a.arrays["mated"] for a in analyses] + [a.arrays["nonmated"] for a in analyses])
    for a, colour in zip(analyses, COLOURS, strict=False):
        _hist(ax, a.arrays["mated"], bins, colour, f"{a.name} mated")
        _hist(ax, a.arrays["nonmated"], bins, colour, f"{a.name} non-mated", "--")
        v = a.stats.get("verification")
        if v:
            ax.axvline(v["thresholds_at_fmr"][f"{FMRS[1]:.0e}"], color=colour, lw=0.8, ls=":")
    ax.set_xlabel("cosine similarity of a pair of images")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return _save(fig, path)


def separability(analyses: Sequence[Analysis], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = _cosine_bins([a.arrays["nearest_other"] for a in analyses])
    for a, colour in zip(analyses, COLOURS, strict=False):
        _hist(ax, a.arrays["nearest_other"], bins, colour, a.name)
    for t in (0.3, 0.4):
        ax.axvline(t, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("cosine of an identity's centroid to the nearest other identity's centroid")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return _save(fig, path)


def separation(analyses: Sequence[Analysis], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = _cosine_bins(
        [a.arrays.get("bank_nn", np.zeros(0)) for a in analyses]
        + [a.arrays["nearest_other"] for a in analyses]
    )
    for a, colour in zip(analyses, COLOURS, strict=False):
        if "bank_nn" not in a.arrays:
            continue
        _hist(ax, a.arrays["bank_nn"], bins, colour, f"{a.name} requested (identity vectors)", "--")
        _hist(ax, a.arrays["nearest_other"], bins, colour, f"{a.name} realised (image centroids)")
        requested = a.stats["separation_requested_vs_realised"]["requested_max_cosine"]
        if requested is not None:
            ax.axvline(requested, color=colour, lw=0.8, ls=":")
    ax.set_xlabel("nearest-other-identity cosine")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return _save(fig, path)


def consistency(analyses: Sequence[Analysis], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = _cosine_bins([a.arrays["to_centroid"] for a in analyses])
    for a, colour in zip(analyses, COLOURS, strict=False):
        _hist(ax, a.arrays["to_centroid"], bins, colour, f"{a.name} image to centroid")
        if "to_conditioning" in a.arrays:
            _hist(
                ax, a.arrays["to_conditioning"], bins, colour, f"{a.name} image to conditioning vector", "--"
            )
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return _save(fig, path)


def diversity(analyses: Sequence[Analysis], path: Path) -> Path:
    plt = pyplot()
    panels = [
        ("vendi", "Vendi score per identity"),
        ("images_per_identity", "images per identity"),
        ("blur", "blur (variance of the Laplacian)"),
        ("yaw", "yaw (degrees)"),
        ("pitch", "pitch (degrees)"),
        ("roll", "roll (degrees)"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(10, 5))
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        values = [a.arrays[key].astype(np.float64) for a in analyses]
        finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
        if len(finite) == 0:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        else:
            lo, hi = float(finite.min()), float(finite.max())
            bins = np.linspace(lo - 0.5, hi + 0.5, 31) if hi > lo else np.array([lo - 0.5, lo + 0.5])
            for a, v, colour in zip(analyses, values, COLOURS, strict=False):
                _hist(ax, v, bins, colour, a.name)
        ax.set_title(title, fontsize=9)
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path)


def leakage(analyses: Sequence[Analysis], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = _cosine_bins([a.arrays.get("leak_identity", np.zeros(0)) for a in analyses])
    for a, colour in zip(analyses, COLOURS, strict=False):
        if "leak_identity" not in a.arrays:
            continue
        values = a.arrays["leak_identity"]
        ax.hist(
            values, bins=bins, histtype="step", color=colour, label=f"{a.name} identities", lw=1.5, log=True
        )
        for k, t in a.stats["leakage"]["thresholds"].items():
            ax.axvline(t, color=colour if k.startswith("fmr") else "grey", lw=0.8, ls=":")
    ax.set_xlabel("best-match cosine of an identity's centroid in the real gallery (log counts: the tail)")
    ax.set_ylabel("identities")
    ax.legend(fontsize=7)
    return _save(fig, path)


def funnel(analyses: Sequence[Analysis], path: Path) -> Path:
    plt = pyplot()
    shown = [a for a in analyses if "funnel" in a.stats]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.2), squeeze=False)
    for ax, a in zip(axes.flat, shown, strict=True):
        f = a.stats["funnel"]
        names = ["generated", *(f"rejected: {k}" for k in f["rejected_by"]), "kept"]
        values = [f["images_generated"] or 0, *f["rejected_by"].values(), f["images_kept"] or 0]
        ax.barh(names[::-1], values[::-1], color="#1f77b4")
        ax.set_title(a.name, fontsize=9)
        ax.set_xlabel("images")
    return _save(fig, path)


def attributes(analyses: Sequence[Analysis], path: Path) -> Path:
    plt = pyplot()
    keys = sorted({k for a in analyses for k in a.arrays if k.startswith("attribute_")})
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=True):
        values = [a.arrays.get(key, np.zeros(0)) for a in analyses]
        finite = np.concatenate([v[np.isfinite(v)] for v in values])
        bins = np.linspace(finite.min() - 0.5, finite.max() + 0.5, 21) if len(finite) else 10
        for a, v, colour in zip(analyses, values, COLOURS, strict=False):
            _hist(ax, v, bins, colour, a.name)
        ax.set_title(key[len("attribute_") :], fontsize=9)
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path)
