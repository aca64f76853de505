"""The self-contained ``report.html``: plain string templates, every value escaped, images as data URIs."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facesynth.report.analyse import Analysis

STYLE = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
p.meaning{color:#444;font-style:italic}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.grids{display:flex;gap:2em;flex-wrap:wrap}.grid img{width:56px;height:56px;margin:1px}
.pair{display:inline-block;margin:4px;text-align:center;font-size:.75em}
.pair img{width:64px;height:64px}
"""

# What each figure means, in one sentence (shown under its heading).
MEANINGS = {
    "verification": "Cosine similarity of pairs of images of the same identity (mated, solid) and of different "
    "identities (non-mated, dashed): the less they overlap, the more a recognition model trained on "
    "this data can learn who is who; the dotted line is the threshold at FMR 1e-3.",
    "separability": "For each identity, the cosine between its image centroid and the closest other identity's "
    "centroid: mass to the right of 0.3-0.4 means identities that a face matcher would take for the same person.",
    "separation": "The separation the recipe asked for (nearest-other cosine of the identity vectors, dashed; the "
    "dotted line is max_cosine) against what the images realise (nearest-other centroid cosine, solid): "
    "separated input vectors are no proof of separated faces.",
    "consistency": "Cosine of each image to its identity's centroid (and, for facesynth data, to the "
    "identity vector it was generated from): low values are images that drifted away from their person.",
    "diversity": "Vendi score of each identity's images (the effective number of distinct images, 1 = all "
    "alike), images per identity, image sharpness and head pose: a useful dataset varies within each identity.",
    "leakage": "For each synthetic identity, the best-matching identity in the real gallery; the dotted lines are "
    "thresholds calibrated to FMR 1e-2/1e-3/1e-4 on this dataset's non-mated pairs, and grey is the fixed 0.3.",
    "funnel": "How many generated images each filter rejected on the way to the kept dataset.",
    "attributes": "Distributions of the attributes predicted by the supplied ONNX classifier.",
    "grids": "Random identities (rows) and their images, to look at what the numbers describe.",
    "worst": "The worst cases side by side: images least like their identity, the closest pairs of "
    "different identities, and the closest matches in the real gallery.",
}

LEAKAGE_CAVEAT = (
    "A fixed threshold of 0.3 flags almost every dataset against a large gallery: with M gallery identities, "
    "a random impostor clears a threshold at FMR f with probability 1-(1-f)^M, so compare the shares with "
    "that chance level and look at the tail (the log-scale counts and the highest matches listed), not at one number."
)


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def thumbnail_uri(data: bytes, size: int = 64) -> str | None:
    """A small JPEG data URI of an encoded image, or None when it cannot be decoded."""
    from facesynth.filters.sources import open_image

    image = open_image(data)
    if image is None:
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and "value" in value:
        lo, hi = value["ci95"]
        return f"{value['value']:.4g} [{lo:.4g}, {hi:.4g}]"
    if isinstance(value, dict) and "median" in value:
        return f"{value['mean']:.3g} ± {value['std']:.3g} (median {value['median']:.3g}, n={value['count']})"
    if isinstance(value, dict) and value.get("count") == 0:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def table(rows: list[tuple[str, list[Any]]], names: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in values)
        + "</tr>"
        for label, values in rows
    )
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _get(stats: dict[str, Any], dotted: str) -> Any:
    value: Any = stats
    for part in dotted.split("/"):
        if not isinstance(value, dict) or part not in value:
            return "-"
        value = value[part]
    return value


TABLES = {
    "verification": [
        ("EER [95% CI]", "verification/eer"),
        ("FNMR @ FMR 1e-2", "verification/fnmr_at_fmr_1e-02"),
        ("FNMR @ FMR 1e-3", "verification/fnmr_at_fmr_1e-03"),
        ("FNMR @ FMR 1e-4", "verification/fnmr_at_fmr_1e-04"),
        ("Fisher discriminant ratio", "verification/fisher_ratio"),
        ("mated pairs", "verification/mated_pairs"),
        ("non-mated pairs", "verification/nonmated_pairs"),
    ],
    "separability": [
        ("nearest-other centroid cosine", "separability/nearest_other_centroid_cosine"),
        ("unique identities at 0.3", "separability/unique_identities/0.3"),
        ("unique identities at 0.4", "separability/unique_identities/0.4"),
        ("identities (with a face)", "identities_with_face"),
    ],
    "separation": [
        ("requested max cosine", "separation_requested_vs_realised/requested_max_cosine"),
        ("identity vectors: nearest other", "separation_requested_vs_realised/bank_nearest_other_cosine"),
        ("image centroids: nearest other", "separability/nearest_other_centroid_cosine"),
    ],
    "consistency": [
        ("image to centroid", "consistency/image_to_centroid_cosine"),
        ("identity mean to centroid", "consistency/identity_mean_to_centroid"),
        ("image to conditioning vector", "consistency/image_to_conditioning_cosine"),
    ],
    "diversity": [
        ("Vendi per identity", "diversity/vendi_per_identity"),
        ("images per identity", "diversity/images_per_identity"),
        ("blur", "diversity/blur"),
        ("yaw", "diversity/yaw"),
        ("pitch", "diversity/pitch"),
        ("roll", "diversity/roll"),
        ("head pose", "diversity/pose_note"),
    ],
    "leakage": [
        ("gallery size", "leakage/gallery_size"),
        ("identity best match", "leakage/identity_best_match"),
        ("image best match", "leakage/image_best_match"),
        ("thresholds", "leakage/thresholds"),
        ("share of identities above", "leakage/share_identities_above"),
        ("share of images above", "leakage/share_images_above"),
        ("chance share per identity", "leakage/chance_share_per_identity"),
        ("highest identity matches", "leakage/tail"),
    ],
    "funnel": [
        ("images generated", "funnel/images_generated"),
        ("rejected by filter", "funnel/rejected_by"),
        ("rejection reasons", "funnel/reasons"),
        ("images kept", "funnel/images_kept"),
        ("identities planned / kept", "funnel/identities_kept"),
    ],
    "attributes": [],
}

TITLES = {
    "verification": "Verification: mated vs non-mated",
    "separability": "Identity separability",
    "separation": "Requested vs realised separation (facesynth data)",
    "consistency": "Intra-class consistency",
    "diversity": "Diversity",
    "leakage": "Leakage against the real gallery",
    "funnel": "Filter funnel (facesynth data)",
    "attributes": "Attributes",
}


def render(
    analyses: Sequence[Analysis],
    figures: dict[str, Path],
    grids: dict[str, str],
    worst: dict[str, str],
    header: dict[str, Any],
) -> str:
    """The whole page as one string."""
    names = [a.name for a in analyses]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>facesynth report</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>facesynth report: {html.escape(', '.join(names))}</h1>",
        table(
            [
                ("dataset", [a.stats["dataset"] for a in analyses]),
                ("format", [a.stats["format"] for a in analyses]),
                ("embedding space", [a.stats["space"] for a in analyses]),
                (
                    "images (with a face)",
                    [f"{a.stats['images']} ({a.stats['images_with_face']})" for a in analyses],
                ),
                ("identities", [a.stats["identities"] for a in analyses]),
            ],
            names,
        ),
        f"<p>{html.escape(json.dumps(header, sort_keys=True))}</p>",
    ]
    for key, title in TITLES.items():
        if key not in figures:
            continue
        parts.append(f"<h2 id='{key}'>{html.escape(title)}</h2>")
        parts.append(f"<p class='meaning'>{html.escape(MEANINGS[key])}</p>")
        if key == "leakage":
            parts.append(f"<p class='meaning'>{html.escape(LEAKAGE_CAVEAT)}</p>")
        parts.append(f"<img alt='{html.escape(key)}' src='{png_uri(figures[key])}'>")
        rows = [(label, [_get(a.stats, path) for a in analyses]) for label, path in TABLES[key]]
        if key == "attributes":
            rows = [
                (k, [_get(a.stats, f"attributes/{k}") for a in analyses])
                for k in sorted({k for a in analyses for k in a.stats.get("attributes", {})})
            ]
        parts.append(table(rows, names))
    if grids:
        parts.append("<h2 id='grids'>Picture grids</h2>")
        parts.append(f"<p class='meaning'>{html.escape(MEANINGS['grids'])}</p><div class='grids'>")
        parts += [f"<div class='grid'><b>{html.escape(n)}</b><br>{g}</div>" for n, g in grids.items()]
        parts.append("</div>")
    if worst:
        parts.append("<h2 id='worst'>Worst cases</h2>")
        parts.append(f"<p class='meaning'>{html.escape(MEANINGS['worst'])}</p><div class='grids'>")
        parts += [f"<div><b>{html.escape(n)}</b><br>{w}</div>" for n, w in worst.items()]
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def image_tag(uri: str | None, title: str) -> str:
    if uri is None:
        return f"<span title='{html.escape(title)}'>[unreadable]</span>"
    return f"<img src='{uri}' title='{html.escape(title)}' alt='{html.escape(title)}'>"
