"""Identity banks: sampling well-separated identity vectors, leakage checks, per-image variations."""

from __future__ import annotations

from typing import Any

from facesynth.interfaces import IdentitySampler
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

VARIATIONS: Registry[Any] = Registry(
    "variation",
    {
        "none": "facesynth.identity.variations:NoVariation",
        "angular": "facesynth.identity.variations:AngularVariation",
        "gaussian": "facesynth.identity.variations:GaussianVariation",
    },
)
