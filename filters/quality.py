"""The ``quality`` filter: classical image measures (blur, exposure, face size, head pose, detector score)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from facesynth.faces.align import ARCFACE_TEMPLATE, to_rgb
from facesynth.interfaces import Candidate, Face, FilterContext
from facesynth.registry import StrictOptions

# A generic 3D face for the five ArcFace points (x right, y down, z away from the camera, in
# template pixels): x and y are the template itself, so the template is exactly frontal
# (yaw = pitch = roll = 0); depths are average head proportions (nose tip ~13 px in front of
# the eyes at 112 px, mouth corners ~3 px in front).
FACE_3D = np.column_stack([ARCFACE_TEMPLATE - ARCFACE_TEMPLATE.mean(0), [0.0, 0.0, -13.0, -3.0, -3.0]])


def blur(grey: np.ndarray) -> float:
    """Variance of the Laplacian: low for blurry images."""
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def exposure(grey: np.ndarray, dark: int = 40, bright: int = 245) -> tuple[float, float]:
    """Fractions of under- and over-exposed pixels."""
    return float((grey < dark).mean()), float((grey > bright).mean())


def face_region(crop: np.ndarray) -> np.ndarray:
    """The inner face of an aligned crop (eyebrows to chin), free of the alignment's black borders."""
    size = crop.shape[0]
    factor = size / 112 if size % 112 == 0 else size / 128
    shift = 0 if size % 112 == 0 else 8 * factor
    x0, x1 = int(shift + 28 * factor), int(shift + 84 * factor)
    y0, y1 = int(36 * factor), int(104 * factor)
    return crop[y0:y1, x0:x1]


def head_pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from the five landmarks, by cv2.solvePnP on a generic face."""
    points = np.asarray(landmarks, dtype=np.float64)
    eye_distance = max(float(np.linalg.norm(points[1] - points[0])), 1e-6)
    # A long focal length (weak perspective): 5 points cannot pin down a real camera.
    focal = 20.0 * eye_distance
    centre = points.mean(0)
    camera = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]], dtype=np.float64)
    ok, rvec, _ = cv2.solvePnP(FACE_3D, points, camera, None, flags=cv2.SOLVEPNP_EPNP)
    if ok:
        ok, rvec, _ = cv2.solvePnP(
            FACE_3D, points, camera, None, rvec, np.array([[0.0], [0.0], [focal / eye_distance * 35.2]]), True
        )
    if not ok:
        return np.nan, np.nan, np.nan
    r, _ = cv2.Rodrigues(rvec)
    yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1, 1)))
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(yaw), float(pitch), float(roll)


def measure(image: np.ndarray, face: Face | None) -> dict[str, float]:
    """All quality measures of one image; face measures are NaN without a face."""
    if face is not None and face.aligned is not None:
        grey = cv2.cvtColor(face_region(face.aligned), cv2.COLOR_RGB2GRAY)
    else:
        rgb = to_rgb(image)
        scale = 112 / max(rgb.shape[:2])
        grey = cv2.cvtColor(
            cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY
        )
    under, over = exposure(grey)
    scores = {
        "quality_blur": blur(grey),
        "quality_underexposed": under,
        "quality_overexposed": over,
        "quality_face_size": np.nan,
        "quality_eye_distance": np.nan,
        "quality_yaw": np.nan,
        "quality_pitch": np.nan,
        "quality_roll": np.nan,
        "quality_det_score": np.nan,
    }
    if face is not None:
        x0, y0, x1, y1 = (float(v) for v in face.box)
        yaw, pitch, roll = head_pose(face.landmarks)
        scores.update(
            quality_face_size=float(np.sqrt(max(x1 - x0, 0) * max(y1 - y0, 0))),
            quality_eye_distance=float(np.linalg.norm(face.landmarks[1] - face.landmarks[0])),
            quality_yaw=yaw,
            quality_pitch=pitch,
            quality_roll=roll,
            quality_det_score=float(face.score),
        )
    return scores


class QualityFilter:
    """Rejects blurry, badly exposed, small or strongly turned faces; each check is off when None."""

    name = "quality"
    dataset_pass = None  # no check across units
    score_columns = (
        "quality_blur",
        "quality_underexposed",
        "quality_overexposed",
        "quality_face_size",
        "quality_eye_distance",
        "quality_yaw",
        "quality_pitch",
        "quality_roll",
        "quality_det_score",
    )

    class Options(StrictOptions):
        min_blur: float | None = 20.0  # Laplacian variance on the aligned 112 px face
        max_underexposed: float | None = 0.5  # fraction of face pixels darker than 40/255
        max_overexposed: float | None = 0.3  # fraction of face pixels brighter than 245/255
        min_face_size: float | None = None  # sqrt(box area), in image pixels
        min_eye_distance: float | None = None  # in image pixels
        max_yaw: float | None = None  # degrees, absolute
        max_pitch: float | None = None
        max_roll: float | None = None
        min_det_score: float | None = None  # on the detector's own scale

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()

    def reason(self, s: dict[str, float]) -> str | None:
        """The first failed check, as a short reason, or None (exposure first: it also lowers blur)."""
        o = self.options
        checks = [  # (label, value, bound, True when the value must stay at or below the bound)
            ("underexposed", s["quality_underexposed"], o.max_underexposed, True),
            ("overexposed", s["quality_overexposed"], o.max_overexposed, True),
            ("blur", s["quality_blur"], o.min_blur, False),
            ("face size", s["quality_face_size"], o.min_face_size, False),
            ("eye distance", s["quality_eye_distance"], o.min_eye_distance, False),
            ("detector score", s["quality_det_score"], o.min_det_score, False),
            ("yaw", abs(s["quality_yaw"]), o.max_yaw, True),
            ("pitch", abs(s["quality_pitch"]), o.max_pitch, True),
            ("roll", abs(s["quality_roll"]), o.max_roll, True),
        ]
        for label, value, bound, is_max in checks:
            if bound is None:
                continue
            # written so that NaN (not measurable, e.g. no face) fails an active check
            if is_max and not value <= bound:
                return f"{label} {value:.3g} > {bound:g}"
            if not is_max and not value >= bound:
                return f"{label} {value:.3g} < {bound:g}"
        return None

    def __call__(self, batch: Sequence[Candidate], context: FilterContext) -> None:
        for c in batch:
            if not c.accepted:
                continue
            if c.image is None:
                c.reject(self.name, "unreadable image")
                continue
            scores = measure(c.image, c.face)
            c.scores.update(scores)
            reason = self.reason(scores)
            if reason is not None:
                c.reject(self.name, reason)

    def accept(self, candidate: Candidate, context: FilterContext) -> None:
        """Stateless."""
