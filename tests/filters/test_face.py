"""Detection and alignment on real faces with the offline dlib models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facesynth.faces import DETECTORS
from facesynth.faces.align import apply_transform, similarity_transform, template
from facesynth.faces.dlib_detector import DLIB5_IN_ARCFACE_112, dlib5_to_insightface
from facesynth.filters import load_filter


def test_similarity_transform_recovers_a_known_similarity() -> None:
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -3.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = template(112)
    dst = src @ rotation.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(apply_transform(matrix, src), dst, atol=1e-9)


def test_templates_for_other_crop_sizes() -> None:
    np.testing.assert_allclose(template(224), template(112) * 2)
    assert template(128)[0, 0] == pytest.approx(38.2946 + 8.0)


def test_dlib_points_convert_to_the_template_and_keep_the_nose_offset() -> None:
    points = dlib5_to_insightface(DLIB5_IN_ARCFACE_112 * 2 + 10)
    np.testing.assert_allclose(points, template(112) * 2 + 10, atol=1e-3)
    turned = DLIB5_IN_ARCFACE_112.copy()
    turned[4, 0] += 6  # nose base moved sideways (a turned head): the nose tip follows
    assert dlib5_to_insightface(turned)[2, 0] - template(112)[2, 0] > 4


def test_astronaut_is_found_and_aligned_at_every_crop_size(astronaut, make_batch, context) -> None:
    for size in (112, 128, 224):
        face = load_filter("face", size=size)
        batch = make_batch([astronaut])
        face(batch, context())
        c = batch[0]
        assert c.accepted, c.reason
        assert c.face.aligned.shape == (size, size, 3)
        assert c.scores["face_count"] == 1 and c.scores["face_score"] > 0.5
    # the eyes land where they should: aligned landmarks sit on the template
    eyes = c.face.landmarks[:2]
    assert 190 < eyes[0, 0] < 215 and 235 < eyes[1, 0] < 260 and 90 < eyes[:, 1].mean() < 115


def test_tight_crop_is_found_thanks_to_padding(astronaut) -> None:
    detector = DETECTORS.create("dlib", cnn_fallback=False)
    # brows to chin only, upscaled to 512 px: as tight as Arc2Face's portraits get
    tight = cv2.resize(
        np.ascontiguousarray(astronaut[95:165, 190:265]), (512, 512), interpolation=cv2.INTER_CUBIC
    )
    assert len(DETECTORS.create("dlib", pad=0.0, cnn_fallback=False).detect(tight)) == 0
    assert len(detector.detect(tight)) == 1


@pytest.mark.slow
def test_lfw_faces_kept_and_non_faces_rejected(lfw, make_batch, context) -> None:
    faces, non_faces = lfw
    face = load_filter("face")
    batch = make_batch(faces + non_faces)
    face(batch, context())
    kept_faces = sum(c.accepted for c in batch[:100])
    rejected_non_faces = sum(not c.accepted for c in batch[100:])
    assert kept_faces >= 95 and rejected_non_faces >= 95, (kept_faces, rejected_non_faces)
    assert {c.reason for c in batch[100:] if not c.accepted} == {"no face"}


def test_two_faces_are_rejected(astronaut, make_batch, context) -> None:
    pair = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)
    batch = make_batch([pair])
    load_filter("face")(batch, context())
    assert batch[0].rejected_by == "face" and batch[0].reason == "2 faces"
    assert batch[0].scores["face_count"] == 2


def test_bad_inputs_are_rejected_with_a_reason(make_batch, context) -> None:
    blank = np.full((200, 200, 3), 128, np.uint8)
    batch = make_batch([None, blank, np.zeros((1, 1, 3), np.uint8)])
    load_filter("face", detector={"name": "dlib", "cnn_fallback": False})(batch, context())
    assert [c.reason for c in batch] == ["unreadable image", "no face", "no face"]
    assert np.isnan(batch[1].scores["face_score"])


def test_unknown_detector_option_is_a_user_error() -> None:
    from facesynth.errors import UserInputError

    with pytest.raises(UserInputError, match="upsampel"):
        load_filter("face", detector={"name": "dlib", "upsampel": 2})
