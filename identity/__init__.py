"""Identity banks: sampling well-separated identity vectors, leakage checks, per-image variations."""

from __future__ import annotations

from typing import Any

from facesynth.interfaces import Embedder, IdentitySampler
from facesynth.registry import Registry

SAMPLERS: Registry[IdentitySampler] = Registry(
    "sampler",
    {
        "sphere": "facesynth.identity.samplers:SphereSampler",
        "gaussian": "facesynth.identity.samplers:GaussianSampler",
        "file": "facesynth.identity.samplers:FileSampler",
        "images": "facesynth.identity.samplers:ImagesSampler",
    },
)

EMBEDDERS: Registry[Embedder] = Registry(
    "embedder",
    {
        "arcface-onnx": "facesynth.identity.arcface_onnx:ArcFaceONNXEmbedder",
        "dlib": "facesynth.identity.dlib_embedder:DlibEmbedder",
        "insightface": "facesynth.identity.insightface_embedder:InsightFaceEmbedder",
    },
)

VARIATIONS: Registry[Any] = Registry(
    "variation",
    {
        "none": "facesynth.identity.variations:NoVariation",
        "angular": "facesynth.identity.variations:AngularVariation",
        "gaussian": "facesynth.identity.variations:GaussianVariation",
    },
)


def load_embedder(name: str, **options: Any) -> Embedder:
    """Build embedder ``name``, e.g. ``load_embedder("dlib")``."""
    return EMBEDDERS.create(name, **options)
