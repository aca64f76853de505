"""The ``separation`` filter: an image must not look like another identity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from facesynth.faces.models import split_spec
from facesynth.filters.embedding import (
    EmbeddingFilter,
    accepted_centroid,
    default_threshold,
    in_generator_space,
    threshold,
    unit,
)
from facesynth.interfaces import Candidate, FilterContext
from facesynth.registry import StrictOptions


def colliding_identities(
    identities: np.ndarray, centroids: np.ndarray, max_cosine: float, block: int = 2048
) -> dict[int, str]:
    """Greedy pass in the given order: drop an identity whose centroid's cosine to an already kept
    one exceeds ``max_cosine``. Works in blocks, so memory stays O(block x N)."""
    centroids = unit(centroids)
    count = len(identities)
    conflicts: list[list[tuple[int, float]]] = [[] for _ in range(count)]
    for start in range(0, count, block):
        sims = centroids[start : start + block] @ centroids[: start + block].T
        for row in range(sims.shape[0]):
            i = start + row
            hits = np.flatnonzero(sims[row, :i] > max_cosine)
            conflicts[i] = [(int(j), float(sims[row, j])) for j in hits]
    kept = np.zeros(count, dtype=bool)
    dropped: dict[int, str] = {}
    for i in range(count):
        clash = [(j, cos) for j, cos in conflicts[i] if kept[j]]
        if clash:
            j, cos = max(clash, key=lambda jc: jc[1])
            dropped[int(identities[i])] = (
                f"collides with identity {int(identities[j])} (cosine {cos:.2f} > {max_cosine:g})"
            )
        else:
            kept[i] = True
    return dropped


class SeparationFilter(EmbeddingFilter):
    """The cosine to the nearest *other* identity must stay <= ``max_cosine``.

    Per image, the other identities are the running centroids of this unit's identities (plus,
    when the embedder has the generator's conditioning space, every other bank vector). Across
    units, ``dataset_pass`` drops identities whose centroids collide with an earlier kept one.
    """

    name = "separation"
    score_columns = ("separation_cosine",)

    class Options(StrictOptions):
        embedder: str | dict[str, Any] = "dlib"
        max_cosine: float | None = None  # None: 0.4 for arcface-onnx, 0.9 for dlib
        dataset_pass: bool = True  # run the dataset-wide centroid pass at finalize

    def __init__(self, options: Options | None = None) -> None:
        super().__init__(options or self.Options())
        self.max_cosine = threshold(self.name, self.embedder, self.options.max_cosine)

    def __call__(self, batch: Sequence[Candidate], context: FilterContext) -> None:
        key = self.embedder.space
        candidates = self.embeddings(batch)
        if not candidates:
            return
        names: list[int] = []
        vectors: list[np.ndarray] = []
        for identity in context.accepted_embeddings.get(key, {}):
            centroid = accepted_centroid(context, key, identity)
            if centroid is not None:
                names.append(identity)
                vectors.append(centroid)
        others_ids = np.array(names, dtype=np.int64)
        others = np.stack(vectors) if vectors else np.zeros((0, self.embedder.dim), dtype=np.float32)
        if in_generator_space(self.embedder, context):
            # Normalised once per unit: the bank can hold 100K+ vectors.
            bank = context.extra.get("separation_unit_bank")
            if bank is None:
                bank = context.extra["separation_unit_bank"] = unit(context.bank_vectors)
            others_ids = np.concatenate([others_ids, np.arange(len(bank))])
            others = np.concatenate([others, bank])
        if not len(others):
            return
        for c in candidates:
            sims = others @ c.embeddings[key]
            sims[others_ids == c.identity] = -np.inf
            best = int(np.argmax(sims))
            cosine = float(sims[best])
            if not np.isfinite(cosine):
                continue
            c.scores["separation_cosine"] = cosine
            if cosine > self.max_cosine:
                c.reject(
                    self.name,
                    f"separation cosine {cosine:.2f} > {self.max_cosine:g} (identity {others_ids[best]})",
                )

    @classmethod
    def dataset_pass(  # type: ignore[override]
        cls, options: Options, identities: np.ndarray, centroids: np.ndarray | None
    ) -> dict[int, str]:
        """Identities to drop because their centroid collides with an earlier kept identity.

        Model-free: ``centroids`` are the stored ones of this filter's space (its units' done-markers
        name it), and the threshold comes from the options, not a loaded model.
        """
        if not options.dataset_pass or centroids is None or len(identities) < 2:
            return {}
        key, _ = split_spec(options.embedder)
        max_cosine = (
            options.max_cosine if options.max_cosine is not None else default_threshold(cls.name, key)
        )
        return colliding_identities(np.asarray(identities), centroids, max_cosine)
