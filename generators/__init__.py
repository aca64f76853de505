"""Identity-conditioned image generators, chosen by name from the recipe's ``generator`` section."""

from __future__ import annotations

from typing import Any

from facesynth.interfaces import Generator
from facesynth.registry import Registry

GENERATORS: Registry[Generator] = Registry(
    "generator",
    {
        "tiny": "facesynth.generators.tiny:TinyGenerator",
        "arc2face": "facesynth.generators.arc2face:Arc2FaceGenerator",
        "ipadapter-faceid": "facesynth.generators.ipadapter_faceid:IPAdapterFaceIDGenerator",
        "vec2face": "facesynth.generators.vec2face:Vec2FaceGenerator",
        "idiff-face": "facesynth.generators.idiff_face:IDiffFaceGenerator",
    },
)


def load_generator(name: str, **options: Any) -> Generator:
    """Build generator ``name`` with its options, e.g. ``load_generator("arc2face", steps=25)``."""
    return GENERATORS.create(name, **options)
