"""insightface's own ArcFace recogniser, called directly (``pip install facesynth[insightface]``).

It aligns with ``insightface.utils.face_align.norm_crop`` and embeds with the model object
``insightface.model_zoo.get_model`` returns. Its vectors are those of the ``arcface-onnx``
embedder on the same file (the tests check it), so both share one space: the file's hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from facesynth.errors import UserInputError
from facesynth.faces.align import to_rgb
from facesynth.faces.arcface_onnx import PACK_FILES, ArcFaceONNXEmbedder
from facesynth.faces.models import embedding_space, insightface_model, resolve_model_file
from facesynth.interfaces import Face
from facesynth.registry import StrictOptions

HOW_TO_GET = "give a path to an ArcFace .onnx file or an insightface pack folder such as ~/.insightface/models/buffalo_l"


class InsightFaceEmbedder(ArcFaceONNXEmbedder):
    """512-d L2-normalised embeddings from insightface's ``ArcFaceONNX`` (its alignment, its preprocessing)."""

    name = "insightface"

    class Options(StrictOptions):
        model: str = "~/.insightface/models/buffalo_l"  # .onnx file, pack folder, or hub "repo/id/file"
        detector: str | dict[str, Any] = "insightface"  # used by embed_images
        batch_size: int = 64
        device: Literal["auto", "cpu", "cuda"] = "auto"

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()
        self.path = resolve_model_file(self.options.model, PACK_FILES, HOW_TO_GET)
        self.model = insightface_model(self.path, self.options.device)  # names the install when missing
        from insightface.utils import face_align

        if getattr(self.model, "taskname", None) != "recognition":
            raise UserInputError(f"embedder model {self.path} is not a face recogniser for insightface")
        self.face_align = face_align
        self.size = int(self.model.input_size[0])
        out_dim = self.model.output_shape[-1]
        self.dim = out_dim if isinstance(out_dim, int) else 512
        self.space = embedding_space(ArcFaceONNXEmbedder.name, self.path)

    def embed_aligned(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed aligned RGB crops with ``ArcFaceONNX.get_feat``; float32 [N, dim], unit rows."""
        out = np.zeros((len(crops), self.dim), dtype=np.float32)
        step = self.options.batch_size
        for start in range(0, len(crops), step):
            bgr = [np.ascontiguousarray(c[:, :, ::-1]) for c in crops[start : start + step]]
            out[start : start + len(bgr)] = self.model.get_feat(bgr).reshape(len(bgr), -1)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def embed_faces(self, images: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        """Embed ``faces[i]`` found in ``images[i]``, aligned by insightface's ``norm_crop``."""
        crops = [
            self.face_align.norm_crop(to_rgb(image), face.landmarks, image_size=self.size)
            for image, face in zip(images, faces, strict=True)
        ]
        return self.embed_aligned(crops)
