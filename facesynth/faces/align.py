"""Image helpers shared by the detectors and embedders: RGB conversion, padding, 5-point alignment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from facesynth.interfaces import Face

# ArcFace 112x112 template (insightface order: left eye, right eye, nose tip, left and right mouth corner).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def to_rgb(image: Any) -> np.ndarray:
    """Return ``image`` (PIL image or array: grey, RGB or RGBA, uint8 or float in [0, 1]) as uint8 RGB."""
    if not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("RGB"))
    if image.dtype != np.uint8:
        scale = 255.0 if image.dtype.kind == "f" and image.max(initial=0) <= 1.0 else 1.0
        image = np.clip(image * scale + 0.5, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    elif image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def template(size: int = 112) -> np.ndarray:
    """The five template points for a square crop of ``size`` (112, 128, 224, ...), insightface convention."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE * (size / 112)
    # 128-based crops keep the 112 face and widen the canvas by 8 px per side before scaling.
    return (ARCFACE_TEMPLATE + [8.0, 0.0]) * (size / 128)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping ``src`` onto ``dst``; [2, 3]."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rotation = u @ np.diag(sign) @ vt
    scale = float((sigma * sign).sum() / max(s.var(0).sum(), 1e-12))
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_d - scale * rotation @ mu_s
    return matrix


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def invert_transform(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(matrix)


def align(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp ``image`` so the five ``landmarks`` land on the ArcFace template of a ``size`` crop."""
    matrix = similarity_transform(landmarks, template(size))
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def pad_and_scale(image: np.ndarray, pad: float, max_side: int) -> tuple[np.ndarray, float, int]:
    """Pad every side by ``pad`` x the longer side, then shrink so the longer side is <= ``max_side``.

    Returns the new image, its scale and the pad in original pixels: ``original = new / scale - pad``.
    Padding lets detectors find faces that fill a tight crop (Arc2Face's 512 px portraits).
    """
    border = int(round(pad * max(image.shape[:2])))
    if border:
        image = cv2.copyMakeBorder(
            image, border, border, border, border, cv2.BORDER_CONSTANT, value=(0, 0, 0)
        )
    scale = 1.0
    longer = max(image.shape[:2])
    if max_side and longer > max_side:
        scale = max_side / longer
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image), scale, border


def box_area(face: Face) -> float:
    x0, y0, x1, y1 = (float(v) for v in face.box)
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def main_face(faces: Sequence[Face], confident_score: float = 0.5) -> Face | None:
    """The face an image is about: the largest confident face, else the best-scoring one.

    Restricting "largest" to confident faces keeps a low-score false positive of the same size
    (dlib's HOG finds one on the astronaut's suit) from being picked over the real face.
    """
    if not faces:
        return None
    confident = [f for f in faces if f.score >= confident_score]
    if confident:
        return max(confident, key=box_area)
    return max(faces, key=lambda f: f.score)
