"""Face models shared by ``identity/`` and ``filters/``: detectors, embedders, alignment, model files.

Both stages import from here and never from each other: the bank's ``images`` sampler and gallery
exclusion use the same embedders (and the same real-identity ``Gallery``) as the filters.
"""

from __future__ import annotations

from typing import Any

from facesynth.interfaces import Detector, Embedder
from facesynth.registry import Registry

DETECTORS: Registry[Detector] = Registry(
    "detector",
    {
        "dlib": "facesynth.faces.dlib_detector:DlibDetector",
        "scrfd": "facesynth.faces.scrfd:SCRFDDetector",
        "insightface": "facesynth.faces.insightface_detector:InsightFaceDetector",
    },
)

EMBEDDERS: Registry[Embedder] = Registry(
    "embedder",
    {
        "arcface-onnx": "facesynth.faces.arcface_onnx:ArcFaceONNXEmbedder",
        "dlib": "facesynth.faces.dlib_embedder:DlibEmbedder",
        "insightface": "facesynth.faces.insightface_embedder:InsightFaceEmbedder",
    },
)


def load_embedder(name: str, **options: Any) -> Embedder:
    """Build embedder ``name``, e.g. ``load_embedder("dlib")``."""
    return EMBEDDERS.create(name, **options)
