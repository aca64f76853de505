"""ArcFace recogniser in ONNX (insightface packs, Arc2Face's ``arcface.onnx``), run with onnxruntime.

Input: aligned RGB crops as [N, 3, S, S] float, S and the normalisation read from the model as
insightface's ``ArcFaceONNX`` reads them (``input_normalisation``). Output: [N, 512]
(un-normalised; we L2-normalise). This is the space Arc2Face is conditioned in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from facesynth.errors import UserInputError
from facesynth.faces.align import align, main_face, to_rgb
from facesynth.faces.models import (
    embedding_space,
    get_detector,
    onnx_session,
    resolve_model_file,
)
from facesynth.interfaces import Face
from facesynth.registry import StrictOptions

PACK_FILES = ("arcface.onnx", "glintr100.onnx", "w600k_r50.onnx")
HOW_TO_GET = (
    "run: hf download FoivosPar/Arc2Face arcface.onnx --local-dir models/arc2face (then model: models/arc2face), "
    "or point model at an insightface pack folder such as ~/.insightface/models/antelopev2"
)

# SHA-256 of w600k_r50.onnx in insightface's buffalo_l.zip (release v0.7), the ArcFace whose
# embeddings IP-Adapter FaceID was trained on; an arcface-onnx embedder loading it has this space.
BUFFALO_L_W600K_R50_SHA256 = "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43"
BUFFALO_L_SPACE = f"arcface-onnx:{BUFFALO_L_W600K_R50_SHA256}"


def input_normalisation(path: str) -> tuple[float, float]:
    """(mean, std) an ArcFace ONNX file expects, decided from its graph as insightface decides it.

    Models exported from MXNet subtract and scale inside the graph (nodes named ``_minus*`` /
    ``Sub*`` and ``_mul*`` / ``Mul*`` among the first 8) and take raw 0..255 pixels: (0, 1).
    All others take (x - 127.5) / 127.5.
    """
    import onnx

    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception as exc:  # onnx raises protobuf DecodeError, OSError, ... on a bad file
        raise UserInputError(f"cannot read ONNX model {path}: {str(exc).splitlines()[0]}") from None
    names = [node.name for node in graph.node[:8]]
    subtracts = any(n.startswith(("Sub", "_minus")) for n in names)
    multiplies = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if subtracts and multiplies else (127.5, 127.5)


class ArcFaceONNXEmbedder:
    """512-d L2-normalised ArcFace embeddings of aligned faces (112x112 for the published models)."""

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
        self.space = embedding_space(self.name, self.path)
        self.mean, self.std = input_normalisation(self.path)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        height, width = model_input.shape[2:4]
        if isinstance(height, int) and isinstance(width, int) and height != width:
            raise UserInputError(
                f"ArcFace model {self.path} takes {height}x{width} crops; only square ones work"
            )
        self.size = height if isinstance(height, int) else 112  # crop side, as insightface reads it
        out_dim = self.session.get_outputs()[0].shape[-1]
        self.dim = out_dim if isinstance(out_dim, int) else 512

    def embed_aligned(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed aligned ``size`` x ``size`` RGB crops; float32 [N, dim], unit rows."""
        out = np.zeros((len(crops), self.dim), dtype=np.float32)
        step = self.options.batch_size
        for start in range(0, len(crops), step):
            batch = np.stack(crops[start : start + step]).astype(np.float32)
            blob = ((batch - self.mean) / self.std).transpose(0, 3, 1, 2)
            out[start : start + len(batch)] = self.session.run(None, {self.input_name: blob})[0].reshape(
                len(batch), -1
            )
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def embed_faces(self, images: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        """Embed ``faces[i]`` found in ``images[i]`` (its crop is reused when already aligned at ``size``)."""
        crops = []
        for image, face in zip(images, faces, strict=True):
            if face.aligned is not None and face.aligned.shape[:2] == (self.size, self.size):
                crops.append(face.aligned)
            else:
                crops.append(align(to_rgb(image), face.landmarks, self.size))
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
