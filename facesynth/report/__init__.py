"""``facesynth report``: what a face dataset is worth, as numbers (stats.json), plots (PNG) and one page.

Steps: embed each dataset once per embedding space into the cache (``report.embed``), compute the
figures from the cache a block of identities at a time (``report.analyse`` on ``report.metrics``),
draw them (``report.plots``) and write a self-contained page (``report.page``). Only ``--out`` and
the cache folder are written to.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facesynth.errors import UserInputError
from facesynth.report.analyse import Analysis, Options, analyse, facesynth_figures, is_facesynth_output
from facesynth.report.cache import Entry, slug

GRID_IDENTITIES = 6
GRID_IMAGES = 8


def _names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        name = slug(p)
        names.append(name if name not in names else f"{name}-{len(names) + 1}")
    return names


def _check_out(out: Path, inputs: Sequence[Path]) -> None:
    for p in inputs:
        root = p.resolve()
        if p.is_dir() and (out == root or root in out.parents):
            raise UserInputError(f"--out {out} is inside the dataset {p}; write the report elsewhere")


def gallery_vectors(
    gallery: str | Path, embedder: str, cache: Path, aligned: bool, detector: str, progress: bool
) -> tuple[np.ndarray, Entry | None]:
    """Unit [M, D] real-identity vectors: an embeddings file as is, or a dataset's identity centroids."""
    from facesynth.faces.gallery import VECTOR_SUFFIXES, load_vectors
    from facesynth.report import metrics as M
    from facesynth.report.embed import cached_embeddings

    path = Path(gallery)
    if path.is_file() and path.suffix.lower() in VECTOR_SUFFIXES:
        return M.unit(np.asarray(load_vectors(path, "gallery"), np.float32)), None
    # aligned gallery crops need no pose: no detector pass
    entry = cached_embeddings(path, embedder, cache, aligned, "none" if aligned else detector, None, progress)
    rows = entry.rows(0, len(entry))
    ok = np.isfinite(rows).all(axis=1)
    cents = M.centroids(rows[ok], entry.labels[ok], entry.classes)
    return cents, entry


def report(
    datasets: Sequence[str | Path],
    embedder: str,
    out: str | Path,
    gallery: str | Path | None = None,
    aligned: bool = False,
    cache: str | Path | None = None,
    detector: str = "dlib",
    attributes: str | None = None,
    options: Options | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out/report.html``, ``out/stats.json`` and the PNG plots; returns the stats."""
    from facesynth.report.embed import cached_embeddings

    if not datasets:
        raise UserInputError("give at least one dataset to report on")
    out = Path(out).expanduser().resolve()
    paths = [Path(d).expanduser() for d in datasets]
    for p in paths:
        if not p.exists():
            raise UserInputError(f"dataset {p} does not exist")
    _check_out(out, paths + ([Path(gallery)] if gallery else []))
    cache_dir = Path(cache).expanduser().resolve() if cache else out / "cache"
    _check_out(cache_dir, paths)
    out.mkdir(parents=True, exist_ok=True)
    entries = [
        cached_embeddings(p, embedder, cache_dir, aligned, detector, attributes, progress) for p in paths
    ]
    gallery_rows, gallery_entry = (
        gallery_vectors(gallery, embedder, cache_dir, aligned, detector, progress)
        if gallery
        else (None, None)
    )
    names = _names(paths)
    analyses = []
    for path, entry, name in zip(paths, entries, names, strict=True):
        if gallery_rows is not None and gallery_rows.shape[1] != entry.dim:
            raise UserInputError(
                f"gallery vectors have dimension {gallery_rows.shape[1]}, the embedder {entry.dim}"
            )
        a = analyse(entry, name, options, gallery_rows, progress)
        if path.is_dir() and is_facesynth_output(path):
            facesynth_figures(path, entry, a)
        analyses.append(a)
    readers = {name: entry for name, entry in zip(names, entries, strict=True)}
    return write_report(out, analyses, readers, gallery_entry, {"embedder": embedder, "aligned": aligned})


def write_report(
    out: Path,
    analyses: Sequence[Analysis],
    entries: dict[str, Entry] | None,
    gallery_entry: Entry | None,
    header: dict[str, Any],
) -> dict[str, Any]:
    """Plots, stats.json and report.html for computed analyses; picture grids when images are readable."""
    from facesynth.report import page, plots

    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "verification": plots.verification(analyses, out / "verification.png"),
        "separability": plots.separability(analyses, out / "separability.png"),
        "consistency": plots.consistency(analyses, out / "consistency.png"),
        "diversity": plots.diversity(analyses, out / "diversity.png"),
    }
    if any("bank_nn" in a.arrays for a in analyses):
        figures["separation"] = plots.separation(analyses, out / "separation.png")
    if any("leak_identity" in a.arrays for a in analyses):
        figures["leakage"] = plots.leakage(analyses, out / "leakage.png")
    if any("funnel" in a.stats for a in analyses):
        figures["funnel"] = plots.funnel(analyses, out / "funnel.png")
    if any(k.startswith("attribute_") for a in analyses for k in a.arrays):
        figures["attributes"] = plots.attributes(analyses, out / "attributes.png")
    grids, worst = ({}, {}) if entries is None else pictures(analyses, entries, gallery_entry)
    stats = {
        "datasets": {a.name: a.stats for a in analyses},
        **header,
        "figures": sorted(f.name for f in figures.values()),
    }
    (out / "stats.json").write_text(json.dumps(_finite(stats), indent=1, sort_keys=True) + "\n")
    (out / "report.html").write_text(page.render(analyses, figures, grids, worst, header))
    return stats


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def pictures(
    analyses: Sequence[Analysis], entries: dict[str, Entry], gallery_entry: Entry | None
) -> tuple[dict[str, str], dict[str, str]]:
    """HTML of the random identity grids and the worst-case pairs, thumbnails embedded."""
    from facesynth.readers import open_dataset
    from facesynth.report.page import image_tag, thumbnail_uri

    grids, worst = {}, {}
    gallery = open_dataset(gallery_entry.meta["dataset"]) if gallery_entry is not None else None
    for a in analyses:
        entry = entries[a.name]
        dataset = open_dataset(entry.meta["dataset"])
        try:
            rng = np.random.default_rng(0)
            chosen = np.sort(rng.choice(entry.classes, min(GRID_IDENTITIES, entry.classes), replace=False))
            rows = []
            for k in chosen:
                images = entry.index[entry.bounds[k] : entry.bounds[k + 1]][:GRID_IMAGES]
                name = entry.meta["identity_names"][k]
                rows.append(
                    "".join(
                        image_tag(thumbnail_uri(dataset.read(int(i))), f"{name}/{dataset.name(int(i))}")
                        for i in images
                    )
                )
            grids[a.name] = "<br>".join(rows)
            html_parts = []
            for title, cases in a.worst.items():
                html_parts.append(f"<p>{title}</p>")
                for case in cases:
                    left = image_tag(thumbnail_uri(dataset.read(case[0])), dataset.name(case[0]))
                    if title == "closest gallery matches":
                        right = ""
                        if gallery is not None and gallery_entry is not None:
                            first = gallery_entry.index[gallery_entry.bounds[case[1]]]
                            right = image_tag(
                                thumbnail_uri(gallery.read(int(first))), gallery.name(int(first))
                            )
                    else:
                        right = image_tag(thumbnail_uri(dataset.read(case[1])), dataset.name(case[1]))
                    html_parts.append(f"<span class='pair'>{left}{right}<br>{case[2]:.3f}</span>")
            worst[a.name] = "".join(html_parts)
        finally:
            dataset.close()
    if gallery is not None:
        gallery.close()
    return grids, worst
