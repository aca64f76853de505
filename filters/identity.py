"""The ``identity`` filter: each image must look like its identity."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from facesynth.filters.embedding import (
    EmbeddingFilter,
    accepted_centroid,
    in_generator_space,
    threshold,
    unit,
)
from facesynth.interfaces import Candidate, FilterContext
from facesynth.registry import StrictOptions


class IdentityFilter(EmbeddingFilter):
    """Cosine between an image and its identity's target must reach ``min_cosine``.

    The target is the bank vector when the embedder has the space the generator is conditioned in
    (``arcface-onnx`` on the arcface.onnx Arc2Face ships); otherwise the running centroid of the
    identity's images accepted so far. For an identity with no accepted image yet, the medoid of its
    candidates in the batch (the image closest on average to the others) is the provisional target, so
    one odd first image cannot define the identity. The pipeline hands a filter all of an identity's
    candidates of one round at once (see ``Filter``), so that set never depends on batch sizes.
    """

    name = "identity"
    score_columns = ("identity_cosine",)

    class Options(StrictOptions):
        embedder: str | dict[str, Any] = "dlib"
        min_cosine: float | None = None  # None: 0.6 for arcface-onnx, 0.92 for dlib

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options or self.Options())
        self.min_cosine = threshold(self.name, self.embedder, self.options.min_cosine)

    def targets(self, candidates: list[Candidate], context: FilterContext) -> dict[int, np.ndarray]:
        key = self.embedder.space
        by_identity: dict[int, list[np.ndarray]] = defaultdict(list)
        for c in candidates:
            by_identity[c.identity].append(c.embeddings[key])
        targets = {}
        for identity, vectors in by_identity.items():
            if in_generator_space(self.embedder, context):
                targets[identity] = unit(context.bank_vectors[identity])
                continue
            centroid = accepted_centroid(context, key, identity)
            if centroid is None:
                stack = np.stack(vectors)
                centroid = stack[int(np.argmax((stack @ stack.T).sum(1)))]
            targets[identity] = centroid
        return targets

    def __call__(self, batch: Sequence[Candidate], context: FilterContext) -> None:
        candidates = self.embeddings(batch)
        if not candidates:
            return
        targets = self.targets(candidates, context)
        for c in candidates:
            cosine = float(c.embeddings[self.embedder.space] @ targets[c.identity])
            c.scores["identity_cosine"] = cosine
            if cosine < self.min_cosine:
                c.reject(self.name, f"identity cosine {cosine:.2f} < {self.min_cosine:g}")
