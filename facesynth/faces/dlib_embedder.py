"""dlib's 128-d ResNet face embedder (offline, public domain weights, 99.38% on LFW).

dlib's network expects its own 150x150 chip (built from its 5-point landmarks with 25%
padding), not the ArcFace crop, so each face is re-landmarked inside its box and chipped
the way the network was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from facesynth.faces.align import main_face, to_rgb
from facesynth.faces.models import dlib_model, dlib_model_path, embedding_space, get_detector, import_dlib
from facesynth.interfaces import Face
from facesynth.registry import StrictOptions


class DlibEmbedder:
    """128-d L2-normalised identity vectors from dlib's face recognition ResNet."""

    name = "dlib"
    dim = 128
    # The files that decide the vectors (landmarks for the chip, then the network): the space's hash.
    MODEL_FILES = ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")

    class Options(StrictOptions):
        detector: str | dict[str, Any] = "dlib"  # used by embed_images to find the face
        num_jitters: int = 0  # >0: average over that many random jitters (slower, slightly better)
        batch_size: int = 32

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self.dlib = import_dlib()
        self.shape = dlib_model("shape5")
        self.net = dlib_model("resnet")
        self.space = embedding_space(self.name, *(dlib_model_path(f) for f in self.MODEL_FILES))

    def chip(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The 150x150 chip dlib's network expects, for ``face`` in an RGB ``image``."""
        x0, y0, x1, y1 = (int(round(float(v))) for v in face.box)
        shape = self.shape(image, self.dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return self.dlib.get_face_chip(image, shape, size=150, padding=0.25)

    def embed_faces(self, images: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        """Embed ``faces[i]`` found in ``images[i]``; float32 [N, 128], unit rows."""
        chips = [self.chip(to_rgb(image), face) for image, face in zip(images, faces, strict=True)]
        out = np.zeros((len(chips), self.dim), dtype=np.float32)
        step = self.options.batch_size
        for start in range(0, len(chips), step):
            part = chips[start : start + step]
            vectors = self.net.compute_face_descriptor(part, self.options.num_jitters)
            out[start : start + len(part)] = np.array([np.array(v) for v in vectors], dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """Detect the largest face of each image and embed it; rows with no face are NaN."""
        detector = get_detector(self.options.detector)
        out = np.full((len(images), self.dim), np.nan, dtype=np.float32)
        rgb = [to_rgb(image) for image in images]
        found = []
        for i, image in enumerate(rgb):
            face = main_face(detector.detect(image))
            if face is not None:
                found.append((i, face))
        if found:
            index = [i for i, _ in found]
            out[index] = self.embed_faces([rgb[i] for i in index], [f for _, f in found])
        return out
