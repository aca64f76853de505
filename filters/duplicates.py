"""The ``duplicates`` filter: no two near-identical images within an identity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from facesynth.filters.embedding import EmbeddingFilter, threshold
from facesynth.interfaces import Candidate, FilterContext
from facesynth.registry import StrictOptions


class DuplicatesFilter(EmbeddingFilter):
    """Drops an image whose cosine to an accepted image of its identity (or an earlier image of
    the same batch that is still accepted) exceeds ``max_cosine``."""

    name = "duplicates"
    score_columns = ("duplicates_cosine",)

    class Options(StrictOptions):
        embedder: str | dict[str, Any] = "dlib"
        max_cosine: float | None = None  # None: 0.9 for arcface-onnx, 0.99 for dlib

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options or self.Options())
        self.max_cosine = threshold(self.name, self.embedder, self.options.max_cosine)

    def __call__(self, batch: Sequence[Candidate], context: FilterContext) -> None:
        key = self.embedder.space
        kept: dict[int, list[np.ndarray]] = {}
        for c in self.embeddings(batch):
            if c.identity not in kept:
                kept[c.identity] = list(context.accepted_embeddings.get(key, {}).get(c.identity, []))
            others = kept[c.identity]
            vector = c.embeddings[key]
            cosine = float(np.max(np.stack(others) @ vector)) if others else np.nan
            c.scores["duplicates_cosine"] = cosine
            if others and cosine > self.max_cosine:
                c.reject(self.name, f"duplicate cosine {cosine:.3f} > {self.max_cosine:g}")
            else:
                kept[c.identity].append(vector)
