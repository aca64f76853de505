"""Our SCRFD decoding/NMS, ArcFace preprocessing and 5-point alignment against insightface itself.

insightface (2.x, pure Python) runs on the same tiny random ONNX files in the published layouts;
any drift from the tool users already trust fails here. The dev setup installs it with
``--no-deps`` (scripts/setup.sh): its opencv-python requirement would replace our headless cv2.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("insightface", reason="installed by scripts/setup.sh (pip install --no-deps)")
from insightface.model_zoo import get_model  # noqa: E402
from insightface.utils import face_align  # noqa: E402

from facesynth.faces import (
    DETECTORS,  # noqa: E402
    load_embedder,  # noqa: E402
)
from facesynth.faces.align import align, similarity_transform, template  # noqa: E402

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def pictures(astronaut, lfw) -> list[np.ndarray]:
    """Square, tall and wide pictures (the letterbox rounds differently for each) and a small face."""
    return [astronaut, np.ascontiguousarray(astronaut[40:460, 120:380]), astronaut[100:300, :], lfw[0][7]]


def test_scrfd_decoding_and_nms_match_insightface(tiny_scrfd, pictures) -> None:
    theirs = get_model(str(tiny_scrfd), providers=CPU)
    theirs.prepare(-1)
    assert type(theirs).__name__ == "SCRFD"
    ours = DETECTORS.create("scrfd", model=str(tiny_scrfd), pad=0.0, device="cpu")
    for picture in pictures:
        boxes, marks = theirs.detect(np.ascontiguousarray(picture[:, :, ::-1]))  # insightface takes BGR
        faces = ours.detect(picture)
        assert len(faces) == len(boxes) > 5  # random weights: many overlapping boxes for NMS to sort out
        np.testing.assert_allclose(np.stack([f.box for f in faces]), boxes[:, :4], atol=1e-4)
        np.testing.assert_allclose([f.score for f in faces], boxes[:, 4], atol=1e-6)
        np.testing.assert_allclose(np.stack([f.landmarks for f in faces]), marks, atol=1e-4)


def test_insightface_detector_option_equals_scrfd(tiny_scrfd, pictures) -> None:
    options = {"model": str(tiny_scrfd), "threshold": 0.5, "nms_iou": 0.3, "device": "cpu"}
    ours, theirs = DETECTORS.create("scrfd", **options), DETECTORS.create("insightface", **options)
    found = 0
    for picture in pictures:  # padded by 0.25 on each side, as both do by default
        a, b = ours.detect(picture), theirs.detect(picture)
        assert len(a) == len(b)
        found += len(a)
        if not a:
            continue
        np.testing.assert_allclose(np.stack([f.box for f in a]), np.stack([f.box for f in b]), atol=1e-4)
        np.testing.assert_allclose(
            np.stack([f.landmarks for f in a]), np.stack([f.landmarks for f in b]), atol=1e-4
        )
    assert found > 5


@pytest.mark.parametrize("model", ["tiny_arcface", "mxnet_tiny_arcface"])
def test_arcface_preprocessing_matches_insightface(model, request, astronaut) -> None:
    path = request.getfixturevalue(model)
    theirs = get_model(str(path), providers=CPU)
    assert type(theirs).__name__ == "ArcFaceONNX"
    ours = load_embedder("arcface-onnx", model=str(path), device="cpu")
    assert (ours.mean, ours.std, (ours.size, ours.size)) == (
        theirs.input_mean,
        theirs.input_std,
        theirs.input_size,
    )
    crops = [
        cv2.resize(astronaut, (112, 112)),
        np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8),
    ]
    expected = theirs.get_feat([np.ascontiguousarray(c[:, :, ::-1]) for c in crops])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(ours.embed_aligned(crops), expected, atol=1e-5)


@pytest.mark.parametrize("size", [112, 128, 224])
def test_alignment_matches_norm_crop(size, astronaut) -> None:
    rng = np.random.default_rng(size)
    eyes_nose_mouth = np.array([[200, 180], [290, 175], [250, 230], [215, 280], [285, 275]], np.float32)
    for _ in range(5):
        landmarks = (eyes_nose_mouth + rng.normal(0, 6, (5, 2))).astype(np.float32)
        np.testing.assert_allclose(
            similarity_transform(landmarks, template(size)),
            face_align.estimate_norm(landmarks, size),
            atol=1e-4,
        )
        ours = align(astronaut, landmarks, size).astype(np.int16)
        theirs = face_align.norm_crop(astronaut, landmarks, image_size=size).astype(np.int16)
        # insightface (through scikit-image) fits in float32 for float32 points, we in float64: the
        # matrices differ by ~1e-5, which moves a few edge pixels by a few grey levels.
        assert np.abs(ours - theirs).mean() < 0.05 and (ours != theirs).mean() < 0.01


def test_insightface_embedder_shares_the_arcface_onnx_space(tiny_arcface, tiny_scrfd, pictures) -> None:
    detector = {"name": "scrfd", "model": str(tiny_scrfd), "device": "cpu"}
    ours = load_embedder("arcface-onnx", model=str(tiny_arcface), detector=detector, device="cpu")
    theirs = load_embedder("insightface", model=str(tiny_arcface), detector=detector, device="cpu")
    assert theirs.space == ours.space and theirs.dim == 512
    a, b = ours.embed_images(pictures), theirs.embed_images(pictures)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert (np.sum(a * b, axis=1) > 0.999).all()
