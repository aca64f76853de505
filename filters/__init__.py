"""Filters that score generated images and decide which reach the dataset."""

from __future__ import annotations

from typing import Any

from facesynth.interfaces import Filter
from facesynth.registry import Registry

FILTERS: Registry[Filter] = Registry(
    "filter",
    {
        "face": "facesynth.filters.face:FaceFilter",
        "identity": "facesynth.filters.identity:IdentityFilter",
        "separation": "facesynth.filters.separation:SeparationFilter",
        "leakage": "facesynth.filters.leakage:LeakageFilter",
        "quality": "facesynth.filters.quality:QualityFilter",
        "duplicates": "facesynth.filters.duplicates:DuplicatesFilter",
        "fiqa-onnx": "facesynth.filters.fiqa:FIQAFilter",
    },
)


def load_filter(name: str, **options: Any) -> Filter:
    """Build filter ``name`` with its options, e.g. ``load_filter("quality", min_blur=50)``."""
    return FILTERS.create(name, **options)
