"""Vec2Face's AttrOP: capped, per row, flagged in the rows; estimators loaded from the published files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facesynth.errors import FacesynthError, ModelNotFoundError
from facesynth.generators import load_generator
from facesynth.generators.vec2face import (
    ARCFACE_PTH,
    ATTROP_COLUMNS,
    POSE_PTH,
    build_random_estimators,
    build_random_vec2face,
)


@pytest.fixture(scope="session")
def attrop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vec2face-attrop")
    build_random_vec2face(folder)
    build_random_estimators(folder)
    return folder


def make(folder: Path, **attrop):
    return load_generator("vec2face", model=str(folder), device="cpu", batch_size=4, attrop=attrop)


SEEDS = [11, 12, 13]


def raw_vectors() -> np.ndarray:
    return (np.random.default_rng(3).standard_normal((3, 512)) * 1.1).astype(np.float32)


@pytest.mark.slow
def test_converges_when_the_targets_are_met(attrop_dir):
    """Targets every image meets: the loop stops as soon as ``steps`` iterations met them."""
    gen = make(attrop_dir, apply_to="images", min_cosine=-1.0, quality=0.0, steps=2, max_iterations=50)
    images = gen.generate(raw_vectors()[:2], SEEDS[:2])
    scores = gen.image_scores()
    assert len(images) == 2 and set(scores[0]) == set(ATTROP_COLUMNS)
    assert [s["attrop_converged"] for s in scores] == [1.0, 1.0]
    assert [s["attrop_iterations"] for s in scores] == [2.0, 2.0]
    assert all(-1 <= s["attrop_cosine"] <= 1 and s["attrop_quality"] > 0 for s in scores)


def test_stops_at_the_cap_and_flags_the_row(attrop_dir):
    gen = make(attrop_dir, apply_to="images", min_cosine=1.0, quality=1e6, max_iterations=2)
    plain = make(attrop_dir, apply_to="images", min_cosine=-1.0, quality=0.0, max_iterations=2)
    vectors = raw_vectors()[:2]
    optimised = gen.generate(vectors, SEEDS[:2])
    scores = gen.image_scores()
    assert [s["attrop_converged"] for s in scores] == [0.0, 0.0]
    assert [s["attrop_iterations"] for s in scores] == [2.0, 2.0]
    # two Adam steps moved the vectors: the images differ from one step's
    once = plain.generate(vectors, SEEDS[:2])
    assert plain.image_scores()[0]["attrop_iterations"] == 1.0
    assert any(
        np.abs(np.asarray(a).astype(int) - np.asarray(b)).mean() > 0
        for a, b in zip(optimised, once, strict=True)
    )


def test_each_row_is_optimised_alone(attrop_dir):
    gen = make(attrop_dir, apply_to="images", min_cosine=1.0, quality=1e6, max_iterations=2)
    vectors = raw_vectors()
    batch = [np.asarray(im) for im in gen.generate(vectors, SEEDS)]
    batch_scores = gen.image_scores()
    alone = np.asarray(gen.generate(vectors[2:], SEEDS[2:])[0])
    assert np.array_equal(alone, batch[2])
    alone_scores = gen.image_scores()[0]
    assert all(np.array_equal(alone_scores[k], batch_scores[2][k], equal_nan=True) for k in ATTROP_COLUMNS)
    assert np.isnan(alone_scores["attrop_yaw"])  # no yaw target: no pose estimate


def test_refines_identities_once_per_vector(attrop_dir):
    gen = make(attrop_dir, min_cosine=1.0, quality=1e6, max_iterations=2)
    assert gen.refines_identities
    vectors = raw_vectors()[:2]
    refined, records = gen.refine_identities(vectors, SEEDS[:2])
    assert refined.shape == vectors.shape and not np.allclose(refined, vectors)
    assert [r["attrop_converged"] for r in records] == [0.0, 0.0]
    again, _ = gen.refine_identities(vectors[1:2], SEEDS[1:2])
    np.testing.assert_array_equal(again[0], refined[1])
    # plain generation afterwards: no per-image optimisation, no per-image scores
    gen.generate(refined, SEEDS[:2])
    assert gen.image_scores() == [{}, {}]


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_estimator_is_refused_and_missing_ones_named(attrop_dir, tmp_path):
    folder = tmp_path / "estimators"
    build_random_estimators(folder)
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": _RunsCode(str(marker))}, folder / ARCFACE_PTH)
    with pytest.raises(FacesynthError, match="not a plain tensor checkpoint"):
        make(attrop_dir, estimators=str(folder))
    assert not marker.exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="arcface-r100-glint360k.pth is missing"):
        make(attrop_dir, estimators=str(tmp_path / "empty"))


def test_yaw_target_uses_the_pose_estimator(attrop_dir, tmp_path):
    """|yaw| must come within 5 degrees of the target: unreachable far away, met at the measured yaw."""
    vectors = raw_vectors()[:2]
    far = make(attrop_dir, apply_to="images", min_cosine=-1.0, quality=0.0, yaw=200.0, max_iterations=2)
    far.generate(vectors, SEEDS[:2])
    scores = far.image_scores()
    assert [s["attrop_converged"] for s in scores] == [0.0, 0.0]
    yaws = [s["attrop_yaw"] for s in scores]
    assert all(-90 <= w <= 90 for w in yaws)
    near = make(
        attrop_dir, apply_to="images", min_cosine=-1.0, quality=0.0, yaw=abs(yaws[0]), max_iterations=2
    )
    near.generate(vectors[:1], SEEDS[:1])
    assert near.image_scores()[0]["attrop_converged"] == 1.0  # the first iteration's image has that yaw
    # no 6DRepNet file: the error names it and the download
    folder = tmp_path / "no-pose"
    build_random_estimators(folder)
    (folder / POSE_PTH).unlink()
    with pytest.raises(ModelNotFoundError, match="6DRepNet_300W_LP_AFLW2000.pth"):
        make(attrop_dir, estimators=str(folder), yaw=30.0)
