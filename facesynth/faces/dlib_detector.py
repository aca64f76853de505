"""dlib face detector (offline): HOG first, the CNN (MMOD) detector as fallback, 5-point landmarks.

dlib's licence-clean 5-point model gives the two corners of each eye and the base of the nose,
not the insightface points (eye centres, nose tip, mouth corners). We convert:

- fit a similarity from dlib's 5 points onto where they sit, on average, in the ArcFace 112x112
  frame, and map the ArcFace template back through it;
- eye centres and nose tip: add the residual of that fit (how far each eye's corner midpoint and
  the nose base are from their fitted place), so a turned or tilted head still moves them and
  head pose stays measurable;
- mouth corners: the template's, mapped back (estimated from the face geometry; the 5-point
  model sees no mouth).

The canonical positions were measured once with the (non-commercial) 68-point model on LFW
faces and the astronaut, with mirrored copies; only the constants are kept, not that model.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from facesynth.faces.align import (
    ARCFACE_TEMPLATE,
    apply_transform,
    pad_and_scale,
    similarity_transform,
    to_rgb,
)
from facesynth.faces.models import dlib_model, import_dlib
from facesynth.interfaces import Face
from facesynth.registry import StrictOptions

# dlib 5-point order: image-right eye outer, inner corner; image-left eye outer, inner corner; nose base.
DLIB5_IN_ARCFACE_112 = np.array(
    [[80.56, 52.69], [66.71, 53.06], [31.23, 52.90], [45.14, 53.11], [56.05, 79.62]], dtype=np.float64
)


def dlib5_to_insightface(points: np.ndarray) -> np.ndarray:
    """Insightface 5 points from dlib's 5 points (see the module docstring)."""
    points = np.asarray(points, dtype=np.float64)
    to_template = similarity_transform(points, DLIB5_IN_ARCFACE_112)
    back = np.linalg.inv(np.vstack([to_template, [0.0, 0.0, 1.0]]))[:2]
    estimated = apply_transform(back, ARCFACE_TEMPLATE)
    fitted = apply_transform(back, DLIB5_IN_ARCFACE_112)

    def residual(index: list[int]) -> np.ndarray:
        """How far the measured points are from the fit: what the face does beyond a similarity."""
        return points[index].mean(0) - fitted[index].mean(0)

    landmarks = estimated.copy()
    landmarks[0] += residual([2, 3])  # image-left eye: its corners' midpoint moved like this
    landmarks[1] += residual([0, 1])
    landmarks[2] += residual([4])  # nose tip follows the nose base
    return landmarks.astype(np.float32)


class DlibDetector:
    """Finds faces with dlib's HOG detector (CNN fallback) and places the insightface 5 points."""

    class Options(StrictOptions):
        model: Literal["hog", "cnn"] = (
            "hog"  # cnn: slow on CPU (~1 s per 512 px image), uses CUDA if dlib has it
        )
        cnn_fallback: bool = True  # run the CNN detector when HOG finds nothing
        threshold: float = 0.0  # HOG margin / CNN confidence below which detections are dropped
        pad: float = 0.25  # border added on every side (x longer side) so tight crops are found
        max_side: int = 640  # the padded image is shrunk to this longer side for HOG (speed)
        cnn_max_side: int = 384  # and to this one for the CNN detector
        upsample: int = 0  # HOG pyramid upsampling; one more level is tried when nothing is found

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self.dlib = import_dlib()
        self.hog = dlib_model("hog")
        self.shape = dlib_model("shape5")
        self.cnn = dlib_model("cnn") if self.options.model == "cnn" or self.options.cnn_fallback else None

    def _hog(self, image: np.ndarray) -> list[tuple[object, float]]:
        o = self.options
        # Retry finer when nothing is found: one more pyramid level, two for small images
        # (HOG needs ~80 px faces; upsampling a small image is cheap).
        levels = [o.upsample, o.upsample + 1] + ([o.upsample + 2] if max(image.shape[:2]) <= 400 else [])
        for upsample in levels:
            rects, scores, _ = self.hog.run(image, upsample, o.threshold)
            if len(rects):
                return list(zip(rects, scores, strict=True))
        return []

    def _cnn(self, image: np.ndarray) -> list[tuple[object, float]]:
        found = self.cnn(image, 0)
        return [(d.rect, float(d.confidence)) for d in found if d.confidence >= self.options.threshold]

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, best score first; boxes and landmarks in image pixels."""
        image = to_rgb(image)
        o = self.options
        found: list[tuple[object, float]] = []
        work, scale, border = pad_and_scale(image, o.pad, o.max_side if o.model == "hog" else o.cnn_max_side)
        if o.model == "hog":
            found = self._hog(work)
        if not found and self.cnn is not None:
            if o.model == "hog" and o.cnn_max_side < o.max_side:
                work, scale, border = pad_and_scale(image, o.pad, o.cnn_max_side)
            found = self._cnn(work)
        faces = []
        for rect, score in found:
            points = np.array([(p.x, p.y) for p in self.shape(work, rect).parts()], dtype=np.float64)
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float64)
            landmarks = dlib5_to_insightface(points / scale - border)
            faces.append(
                Face(box=(box / scale - border).astype(np.float32), landmarks=landmarks, score=float(score))
            )
        faces.sort(key=lambda f: -f.score)
        return faces
