"""Leakage against a gallery file, and the ONNX detectors/embedders through their real loading code."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from facesynth.errors import UserInputError
from facesynth.faces import DETECTORS, load_embedder
from facesynth.faces.scrfd import anchor_centres, decode, nms
from facesynth.filters import load_filter


def test_leakage_rejects_a_face_in_the_gallery(tmp_path, astronaut, lfw, make_batch, context) -> None:
    real = load_embedder("dlib").embed_images([astronaut])
    gallery = tmp_path / "gallery.npy"
    np.save(
        gallery,
        np.concatenate([np.random.default_rng(0).standard_normal((50, 128)), real]).astype(np.float32),
    )
    filters = [load_filter("face"), load_filter("leakage", gallery=str(gallery))]
    batch = make_batch([astronaut, lfw[0][1]])
    for f in filters:
        f(batch, context())
    assert batch[0].rejected_by == "leakage" and "(gallery row 50)" in batch[0].reason
    assert batch[0].scores["leakage_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert batch[1].accepted and batch[1].scores["leakage_cosine"] < 0.9


def test_leakage_gallery_of_the_wrong_space_is_a_user_error(tmp_path) -> None:
    gallery = tmp_path / "g512.npy"
    np.save(gallery, np.ones((3, 512), np.float32))
    with pytest.raises(UserInputError, match="512-d"):
        load_filter("leakage", gallery=str(gallery))
    with pytest.raises(UserInputError, match="missing.npy"):
        load_filter("leakage", gallery=str(tmp_path / "missing.npy"))


def test_scrfd_decoding_of_one_known_anchor() -> None:
    size = 64
    outputs = []
    for width in (1, 4, 10):  # scores, boxes, landmarks
        for stride in (8, 16, 32):
            outputs.append(np.zeros(((size // stride) ** 2 * 2, width), np.float32))
    centres = anchor_centres(size, size, 16)
    row = 2 * (1 * 4 + 2) + 1  # grid cell y=1, x=2, second anchor -> centre (32, 16)
    np.testing.assert_allclose(centres[row], [32, 16])
    outputs[1][row] = 0.9
    outputs[4][row] = [1, 0.5, 1, 1.5]  # left, top, right, bottom in strides
    outputs[7][row] = np.arange(10) / 10
    boxes, scores, marks = decode(outputs, size, size, 0.5)
    np.testing.assert_allclose(boxes, [[16, 8, 48, 40]])
    np.testing.assert_allclose(scores, [0.9])
    np.testing.assert_allclose(marks[0, 1], [32 + 0.2 * 16, 16 + 0.3 * 16])
    # batch-axis outputs ([1, K, C]) decode the same
    batched = decode([o[None] for o in outputs], size, size, 0.5)
    np.testing.assert_allclose(batched[0], boxes)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.8, 0.9, 0.7]), 0.4) == [1, 2]


def test_tiny_scrfd_loads_from_a_pack_folder(tiny_scrfd, astronaut) -> None:
    detector = DETECTORS.create("scrfd", model=str(tiny_scrfd.parent), threshold=0.0)
    assert detector.input_hw == (64, 64)  # the model's fixed size wins
    faces = detector.detect(astronaut)
    assert faces and all(f.landmarks.shape == (5, 2) for f in faces)
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    face = load_filter("face", detector={"name": "scrfd", "model": str(tiny_scrfd), "threshold": 0.99})
    assert face.check(astronaut)[2] == "no face"


def test_missing_scrfd_pack_names_the_path_and_how_to_get_it(tmp_path) -> None:
    with pytest.raises(UserInputError, match=r"det_10g.onnx.*insightface"):
        DETECTORS.create("scrfd", model=str(tmp_path))
    with pytest.raises(UserInputError, match="hf download FoivosPar/Arc2Face arcface.onnx"):
        load_embedder("arcface-onnx")


def test_tiny_arcface_embeds_through_the_real_code_path(tiny_arcface, astronaut) -> None:
    embedder = load_embedder("arcface-onnx", model=str(tiny_arcface))
    assert embedder.dim == 512 and embedder.name == "arcface-onnx"
    vectors = embedder.embed_images([astronaut, np.zeros((90, 90, 3), np.uint8), astronaut])
    assert vectors.shape == (3, 512) and np.isnan(vectors[1]).all()
    np.testing.assert_allclose(np.linalg.norm(vectors[0]), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    face = load_filter("face", size=224).check(astronaut)[0]
    from_224 = embedder.embed_faces([astronaut], [face])  # re-aligned to 112 from the landmarks
    assert float(from_224[0] @ vectors[0]) > 0.99


def test_a_hub_model_file_that_cannot_be_looked_up_says_why(tmp_path, monkeypatch) -> None:
    from facesynth.errors import ModelNotFoundError
    from facesynth.faces.models import resolve_model_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="is not in the Hugging Face cache; run: hf download"):
        resolve_model_file("someone/models/det.onnx", ("det.onnx",), "")
    # not a cache miss: an invalid repo id is named as such, not reported as 'not in the cache'
    with pytest.raises(ModelNotFoundError, match="HFValidationError"):
        resolve_model_file("some..one/models/det.onnx", ("det.onnx",), "")


def test_arcface_reads_its_input_normalisation_from_the_graph(
    tiny_arcface, mxnet_tiny_arcface, astronaut
) -> None:
    plain = load_embedder("arcface-onnx", model=str(tiny_arcface))
    mxnet = load_embedder("arcface-onnx", model=str(mxnet_tiny_arcface))
    assert (plain.mean, plain.std, plain.size) == (127.5, 127.5, 112)
    assert (mxnet.mean, mxnet.std, mxnet.size) == (0.0, 1.0, 112)  # its _minus0/_mulscalar0 nodes do it
    # Same weights behind the graph's own (x - 127.5) / 128: the network is positively homogeneous
    # (conv, relu, matmul, no bias), so the unit embeddings agree only if raw pixels went in.
    crops = [cv2.resize(astronaut, (112, 112)), np.ascontiguousarray(astronaut[100:212, 200:312])]
    np.testing.assert_allclose(mxnet.embed_aligned(crops), plain.embed_aligned(crops), atol=1e-5)


def test_insightface_options_name_the_install_when_it_is_missing(tiny_arcface, tiny_scrfd) -> None:
    code = (
        "import sys; sys.modules['insightface'] = None\n"  # as if not installed
        "from facesynth.errors import ModelNotFoundError\n"
        "from facesynth.faces import DETECTORS\n"
        "from facesynth.faces import load_embedder\n"
        "for make in (lambda: load_embedder('insightface', model=sys.argv[1]),\n"
        "             lambda: DETECTORS.create('insightface', model=sys.argv[2])):\n"
        "    try:\n"
        "        make()\n"
        "    except ModelNotFoundError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_arcface), str(tiny_scrfd)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 2 and all("pip install 'facesynth[insightface]'" in line for line in out), out
