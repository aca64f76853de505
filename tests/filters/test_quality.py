"""Classical quality measures and the learned (ONNX) quality filter."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facesynth.faces.align import template
from facesynth.filters import load_filter
from facesynth.filters.quality import head_pose


def run(filters, batch, ctx):
    for f in filters:
        f(batch, ctx)
    return batch


def test_sharp_well_exposed_face_passes_and_is_measured(astronaut, make_batch, context) -> None:
    (c,) = run([load_filter("face"), load_filter("quality")], make_batch([astronaut]), context())
    assert c.accepted, c.reason
    assert c.scores["quality_blur"] > 200
    assert c.scores["quality_underexposed"] < 0.05 and c.scores["quality_overexposed"] < 0.05
    assert 30 < c.scores["quality_eye_distance"] < 60 and c.scores["quality_face_size"] > 60
    assert abs(c.scores["quality_yaw"]) < 15 and abs(c.scores["quality_roll"]) < 15


def test_heavy_blur_and_dark_exposure_fail(astronaut, make_batch, context) -> None:
    blurred = cv2.GaussianBlur(astronaut, (0, 0), 3.5)
    dark = (astronaut * 0.15).astype(np.uint8)
    batch = run([load_filter("face"), load_filter("quality")], make_batch([blurred, dark]), context())
    assert batch[0].rejected_by == "quality" and batch[0].reason.startswith("blur")
    assert batch[1].rejected_by == "quality" and batch[1].reason.startswith("underexposed")
    # without a face filter the whole image is measured
    heavy = cv2.GaussianBlur(astronaut, (0, 0), 16)
    (c,) = run([load_filter("quality")], make_batch([heavy]), context())
    assert c.rejected_by == "quality" and np.isnan(c.scores["quality_yaw"])


def test_head_pose_from_landmarks() -> None:
    assert np.allclose(head_pose(template(112)), 0, atol=0.5)
    turned = template(112).copy()
    turned[2, 0] += 6  # nose tip to the side: the head is turned
    yaw, _, _ = head_pose(turned)
    assert abs(yaw) > 10
    angle = np.radians(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    _, _, roll = head_pose(template(112) @ rotation.T)
    assert roll == pytest.approx(20, abs=1)


def test_pose_thresholds_reject(astronaut, make_batch, context) -> None:
    rotated = cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((228, 125), 30, 1.0), (512, 512))
    quality = load_filter("quality", max_roll=15)
    batch = run([load_filter("face"), quality], make_batch([astronaut, rotated]), context())
    assert batch[0].accepted
    assert batch[1].rejected_by == "quality" and batch[1].reason.startswith("roll"), batch[1].reason


def test_fiqa_onnx_scores_and_rejects(tiny_fiqa, astronaut, make_batch, context) -> None:
    fiqa = load_filter("fiqa-onnx", model=str(tiny_fiqa), min_score=-0.5)
    dark = (astronaut * 0.2).astype(np.uint8)
    batch = run([load_filter("face"), fiqa], make_batch([astronaut, dark, None]), context())
    assert batch[0].accepted and batch[0].scores["fiqa_score"] > -0.5
    assert batch[1].rejected_by == "fiqa-onnx" and batch[1].scores["fiqa_score"] < -0.5
    assert batch[2].reason == "unreadable image"
    norm = load_filter(
        "fiqa-onnx", model=str(tiny_fiqa), output="norm", channels="bgr", mean=[0, 0, 0], std=255
    )
    crops = [batch[0].face.aligned]
    assert norm.score(crops)[0] == pytest.approx(batch[0].face.aligned.mean() / 255, rel=1e-4)


def test_fiqa_missing_model_is_a_user_error(tmp_path) -> None:
    from facesynth.errors import UserInputError

    with pytest.raises(UserInputError, match="nope.onnx"):
        load_filter("fiqa-onnx", model=str(tmp_path / "nope.onnx"))
