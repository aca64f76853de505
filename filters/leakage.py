"""The ``leakage`` filter: a synthetic image must not look like a real person of a gallery."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facesynth.filters.embedding import EmbeddingFilter, threshold
from facesynth.interfaces import Candidate, FilterContext
from facesynth.registry import StrictOptions


class LeakageFilter(EmbeddingFilter):
    """Max cosine to a real-identity gallery (``facesynth.faces.gallery``) must stay <= ``max_cosine``.

    The gallery must hold embeddings made by the same embedder as this filter's.
    """

    name = "leakage"
    score_columns = ("leakage_cosine",)

    class Options(StrictOptions):
        gallery: str  # gallery file written by facesynth (see docs/identity.md)
        embedder: str | dict[str, Any] = "dlib"
        max_cosine: float | None = None  # None: 0.3 for arcface-onnx, 0.9 for dlib

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.max_cosine = threshold(self.name, self.embedder, options.max_cosine)
        from facesynth.faces.gallery import Gallery

        self.gallery = Gallery(Path(options.gallery).expanduser())
        self.gallery.check_space(
            self.embedder.space, self.embedder.dim, f"the leakage filter's embedder '{self.embedder.name}'"
        )

    def __call__(self, batch: Sequence[Candidate], context: FilterContext) -> None:
        candidates = self.embeddings(batch)
        if not candidates:
            return
        queries = np.stack([c.embeddings[self.embedder.space] for c in candidates])
        max_cos, argmax = self.gallery.max_cosine(queries)
        for c, cosine, row in zip(candidates, np.asarray(max_cos), np.asarray(argmax), strict=True):
            c.scores["leakage_cosine"] = float(cosine)
            if cosine > self.max_cosine:
                c.reject(
                    self.name, f"leakage cosine {cosine:.2f} > {self.max_cosine:g} (gallery row {int(row)})"
                )
