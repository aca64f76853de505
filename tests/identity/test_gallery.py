"""Gallery: exact nearest-gallery cosines, leakage rejection of planted near-copies, bad files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from facesynth.errors import UserInputError
from facesynth.faces.gallery import Gallery
from facesynth.identity.bank import select_separated
from facesynth.identity.samplers import SphereSampler
from facesynth.separation import SAFETY


def _brute_max(queries: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = queries.astype(np.float64) / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
    g = gallery.astype(np.float64) / np.linalg.norm(gallery.astype(np.float64), axis=1, keepdims=True)
    gram = q @ g.T
    return gram.max(axis=1), gram.argmax(axis=1)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors", ".parquet"])
def test_max_cosine_is_exact_for_every_file_format(tmp_path, suffix):
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((5000, 32)).astype(np.float32) * 3
    queries = rng.standard_normal((40, 32)).astype(np.float32)
    queries[:5] = gallery[[7, 70, 700, 4000, 4999]] * 0.5 + 0.01 * queries[:5]  # near-copies
    path = tmp_path / f"gallery{suffix}"
    if suffix == ".npy":
        np.save(path, gallery)
    elif suffix == ".safetensors":
        save_file({"embeddings": gallery}, str(path))
    else:
        pq.write_table(pa.table({"name": [str(i) for i in range(5000)], "vector": list(gallery)}), path)
    g = Gallery(path, "cpu", block_rows=1500)
    assert (len(g), g.dim) == (5000, 32)
    best, arg = g.max_cosine(queries)
    expected, expected_arg = _brute_max(queries, gallery)
    np.testing.assert_allclose(best, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(arg, expected_arg)
    assert list(arg[:5]) == [7, 70, 700, 4000, 4999]
    assert len(g.sha256) == 64


@pytest.mark.slow
def test_planted_near_copies_never_pass(tmp_path):
    dim, count = 256, 3000
    sampler = SphereSampler(SphereSampler.Options(dim=dim))
    # Reproduce the candidate stream, and plant copies of 300 of its candidates in the gallery,
    # at cosines from 0.3 (just at the threshold) to 0.99.
    stream = sampler.draw(6000, np.random.default_rng(5))
    rng = np.random.default_rng(6)
    planted = rng.choice(6000, 300, replace=False)
    targets = rng.uniform(0.3 + 2 * SAFETY, 0.99, 300)
    noise = rng.standard_normal((300, dim))
    base = stream[planted].astype(np.float64)
    noise -= (noise * base).sum(1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    copies = targets[:, None] * base + np.sqrt(1 - targets[:, None] ** 2) * noise
    filler = rng.standard_normal((20_000, dim))
    gallery = np.concatenate([filler, copies]).astype(np.float32)
    np.save(tmp_path / "g.npy", gallery)
    g = Gallery(tmp_path / "g.npy", "cpu")
    draws = np.random.default_rng(5)
    result = select_separated(
        lambda n: sampler.draw(n, draws), count, 0.5, 6000, block_size=1024, gallery=g, max_gallery_cosine=0.3
    )
    kept_rows = {tuple(v) for v in result.vectors}
    assert not any(tuple(stream[i]) in kept_rows for i in planted[planted < result.drawn])
    assert result.rejected_gallery >= int((planted < result.drawn).sum())
    best, _ = _brute_max(result.vectors, gallery)
    assert best.max() < 0.3


def test_bad_galleries_are_user_errors(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), dtype=np.float32))
    with pytest.raises(UserInputError, match="empty"):
        Gallery(tmp_path / "empty.npy")
    bad = np.ones((10, 8), dtype=np.float32)
    bad[4, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(UserInputError, match="row 4 contains NaN"):
        Gallery(tmp_path / "nan.npy")
    with pytest.raises(UserInputError, match="does not exist"):
        Gallery(tmp_path / "missing.npy")
    (tmp_path / "corrupt.npy").write_bytes(b"not a numpy file")
    with pytest.raises(UserInputError, match="cannot read gallery"):
        Gallery(tmp_path / "corrupt.npy")
    (tmp_path / "vectors.csv").write_text("1,2\n")
    with pytest.raises(UserInputError, match="unsupported suffix"):
        Gallery(tmp_path / "vectors.csv")
    np.save(tmp_path / "ok.npy", np.ones((10, 8), dtype=np.float32))
    with pytest.raises(UserInputError, match="8-d vectors but the queries are 4-d"):
        Gallery(tmp_path / "ok.npy").max_cosine(np.ones((2, 4), dtype=np.float32))
