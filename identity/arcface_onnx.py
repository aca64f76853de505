"""ArcFace recogniser in ONNX (insightface packs, Arc2Face's ``arcface.onnx``), run with onnxruntime.

Input: aligned 112x112 RGB crops as [N, 3, 112, 112] float, (x - 127.5) / 127.5. Output: [N, 512]
(un-normalised; we L2-normalise). This is the space Arc2Face is conditioned in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from facesynth.filters.align import align, main_face, to_rgb
from facesynth.filters.models import get_detector, onnx_session, resolve_model_file
from facesynth.interfaces import Face
from facesynth.registry import StrictOptions

PACK_FILES = ("arcface.onnx", "glintr100.onnx", "w600k_r50.onnx")
HOW_TO_GET = (
    "run: hf download FoivosPar/Arc2Face arcface.onnx --local-dir models/arc2face (then model: models/arc2face), "
    "or point model at an insightface pack folder such as ~/.insightface/models/antelopev2"
)


class ArcFaceONNXEmbedder:
    """512-d L2-normalised ArcFace embeddings of aligned 112x112 faces."""

    name = "arcface-onnx"

    class Options(StrictOptions):
        model: str = "FoivosPar/Arc2Face/arcface.onnx"  # .onnx file, pack folder, or hub "repo/id/file"
        detector: str | dict[str, Any] = "dlib"  # used by embed_images; "scrfd" matches ArcFace's training
        batch_size: int = 64
        device: Literal["auto", "cpu", "cuda"] = "auto"

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self.path = resolve_model_file(self.options.model, PACK_FILES, HOW_TO_GET)
        self.session = onnx_session(self.path, self.options.device)
        self.input_name = self.session.get_inputs()[0].name
        out_dim = self.session.get_outputs()[0].shape[-1]
        self.dim = out_dim if isinstance(out_dim, int) else 512

    def embed_aligned(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed aligned 112x112 RGB crops; float32 [N, dim], unit rows."""
        out = np.zeros((len(crops), self.dim), dtype=np.float32)
        step = self.options.batch_size
        for start in range(0, len(crops), step):
            batch = np.stack(crops[start : start + step]).astype(np.float32)
            blob = ((batch - 127.5) / 127.5).transpose(0, 3, 1, 2)
            out[start : start + len(batch)] = self.session.run(None, {self.input_name: blob})[0].reshape(
                len(batch), -1
            )
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def embed_faces(self, images: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        """Embed ``faces[i]`` found in ``images[i]`` (its 112 crop is reused when already aligned)."""
        crops = []
        for image, face in zip(images, faces, strict=True):
            if face.aligned is not None and face.aligned.shape[:2] == (112, 112):
                crops.append(face.aligned)
            else:
                crops.append(align(to_rgb(image), face.landmarks, 112))
        return self.embed_aligned(crops)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """Detect the largest face of each image and embed it; rows with no face are NaN."""
        detector = get_detector(self.options.detector)
        out = np.full((len(images), self.dim), np.nan, dtype=np.float32)
        rgb = [to_rgb(image) for image in images]
        found = [(i, main_face(detector.detect(image))) for i, image in enumerate(rgb)]
        found = [(i, face) for i, face in found if face is not None]
        if found:
            index = [i for i, _ in found]
            out[index] = self.embed_faces([rgb[i] for i in index], [face for _, face in found])
        return out
