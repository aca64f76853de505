"""The exact pair scans (nearest other row, uniqueness counts, best gallery match) against straightforward
float64 computations, with near-duplicates, exact ties and pairs planted right at the thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facesynth.report import metrics as M
from facesynth.report.analyse import Options, analyse
from facesynth.report.cache import write_entry
from facesynth.report.scan import NearestRows, float32_margin, nearest_and_unique


def cosines64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))


def greedy_unique(vectors: np.ndarray, threshold: float) -> int:
    """The definition: keep a row unless its cosine to a row already kept reaches ``threshold``."""
    c = cosines64(vectors, vectors)
    kept: list[int] = []
    for r in range(len(vectors)):
        if not kept or c[r, kept].max() < threshold:
            kept.append(r)
    return len(kept)


def planted(rng: np.random.Generator, n: int = 300, dim: int = 64) -> np.ndarray:
    base = M.unit(rng.standard_normal((n, dim)))
    base[40:60] = M.unit(base[:20] + 0.4 * M.unit(rng.standard_normal((20, dim))))  # near-duplicates
    base[70] = base[3]  # an exact tie: the lowest index wins
    # pairs at cosine 0.3 and 0.4 up to float32 rounding: the float32 screen cannot decide them
    for k, t in ((80, 0.3), (81, 0.4), (90, 0.3 + 1e-7), (91, 0.4 - 1e-7)):
        noise = rng.standard_normal(dim)
        noise = M.unit(noise - (noise @ base[k - 75]) * base[k - 75])
        base[k] = t * base[k - 75] + math.sqrt(1 - t * t) * noise
    return base


@pytest.mark.parametrize("tile", [7, 64, 2048])
def test_nearest_and_unique_equal_the_definitions(tile: int) -> None:
    vectors = planted(np.random.default_rng(0))
    thresholds = (0.3, 0.4, 0.9)
    cos, which, unique = nearest_and_unique(vectors, thresholds, "cpu", tile)
    brute = cosines64(vectors, vectors)
    np.fill_diagonal(brute, -np.inf)
    assert which.tolist() == brute.argmax(axis=1).tolist() and which[70] == 3 and which[3] == 70
    np.testing.assert_allclose(cos, brute.max(axis=1), rtol=0, atol=1e-12)
    assert unique == {t: greedy_unique(vectors, t) for t in thresholds}
    assert unique[0.3] < unique[0.4] < len(vectors)


def test_planted_near_duplicates_counts() -> None:
    rng = np.random.default_rng(3)
    base = M.unit(rng.standard_normal((50, 512)))  # random 512-d vectors: pairwise cosine ~ +-0.15
    # 10 near-duplicates at cosine ~0.95 of identities 0..9, and 5 at cosine 0.35 of 10..14
    near = M.unit(base[:10] + 0.33 * M.unit(rng.standard_normal((10, 512))))
    noise = rng.standard_normal((5, 512))
    noise = M.unit(noise - np.sum(noise * base[10:15], 1, keepdims=True) * base[10:15])
    mid = 0.35 * base[10:15] + math.sqrt(1 - 0.35**2) * noise  # cosine exactly 0.35
    vectors = M.unit(np.concatenate([base, near, mid]).astype(np.float32))
    cos, which, unique = nearest_and_unique(vectors, (0.3, 0.4), "cpu", tile=16)
    assert unique == {0.3: 50, 0.4: 55}  # both kinds of duplicate are dropped at 0.3, the close ones at 0.4
    assert which[50:60].tolist() == list(range(10)) and (cos[50:60] > 0.9).all()
    assert nearest_and_unique(vectors[:1], (0.3,))[2] == {0.3: 1}


def test_best_gallery_match_equals_the_full_product() -> None:
    rng = np.random.default_rng(1)
    gallery = M.unit(rng.standard_normal((37, 32)))
    gallery[20] = gallery[5]  # a tie: the lower gallery index
    queries = np.concatenate([M.unit(rng.standard_normal((100, 32))), gallery[[5, 9]]])
    best, which = NearestRows(gallery, "cpu", tile=8).best(queries)
    brute = cosines64(queries, gallery)
    assert which.tolist() == brute.argmax(axis=1).tolist() and which[-2] == 5
    np.testing.assert_allclose(best, brute.max(axis=1), rtol=0, atol=1e-12)


def test_the_float32_margin_bounds_the_screen() -> None:
    rng = np.random.default_rng(2)
    x = M.unit(rng.standard_normal((500, 512)) * rng.uniform(0.1, 10, (500, 1)))
    margin = float32_margin(512, np.linalg.norm(x.astype(np.float64), axis=1))
    assert 3e-5 < margin < 1e-4
    assert np.abs((x @ x.T) - cosines64(x, x)).max() < margin


def test_per_image_leakage_equals_the_straightforward_scan(tmp_path) -> None:
    rng = np.random.default_rng(4)
    ids, per, dim = 40, 5, 24
    centres = M.unit(rng.standard_normal((ids, 1, dim)))
    x = M.unit(centres + 0.6 * M.unit(rng.standard_normal((ids, per, dim)))).reshape(-1, dim)
    x[7] = np.nan  # an image without a face
    gallery = M.unit(rng.standard_normal((30, dim)))
    gallery[4] = x[12]  # a leaked image
    gallery[9] = np.nan  # a gallery identity without a face
    labels = np.repeat(np.arange(ids), per)
    meta = {
        "dataset": "synthetic",
        "format": "cache",
        "space": "test",
        "identity_names": [str(k) for k in range(ids)],
    }
    measures = {k: np.zeros(len(x), np.float32) for k in ("yaw", "pitch", "roll", "blur")}
    entry = write_entry(tmp_path / "entry", x, labels, measures, meta)
    a = analyse(entry, "s", Options(bootstrap=0), gallery, progress=False)
    rows = entry.rows(0, len(entry))
    ok = np.isfinite(rows).all(axis=1)
    real = np.isfinite(gallery).all(axis=1)
    brute = cosines64(rows[ok], gallery[real])
    np.testing.assert_allclose(
        a.arrays["leak_image"], brute.max(axis=1).astype(np.float32), rtol=0, atol=1e-7
    )
    assert a.stats["leakage"]["gallery_size"] == 29 and a.stats["leakage"]["image_best_match"]["max"] > 0.9999
    leak = a.worst["closest gallery matches"][0]
    assert leak[0] == 12 and leak[1] == 4  # dataset image 12, gallery row 4
    cents = M.centroids(rows[ok], entry.labels[ok], ids)
    brute_id = cosines64(cents, gallery[real]).max(axis=1).astype(np.float32)
    np.testing.assert_allclose(a.arrays["leak_identity"], brute_id, rtol=0, atol=1e-6)
