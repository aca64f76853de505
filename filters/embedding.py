"""What the embedding-based filters (identity, separation, leakage, duplicates) share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from facesynth.errors import UserInputError
from facesynth.faces.align import to_rgb
from facesynth.faces.models import get_embedder, split_spec
from facesynth.interfaces import Candidate, Embedder, FilterContext

# Per-embedder defaults for the cosine thresholds. ArcFace values are the field's (Vec2Face,
# DCFace); dlib's follow from its documented same-person rule (Euclidean distance < 0.6 on its
# raw vectors of norm ~1.45, i.e. cosine ~0.915 once L2-normalised): same person above, others below.
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "arcface-onnx": {"identity": 0.6, "separation": 0.4, "leakage": 0.3, "duplicates": 0.9},
    "insightface": {"identity": 0.6, "separation": 0.4, "leakage": 0.3, "duplicates": 0.9},
    "dlib": {"identity": 0.92, "separation": 0.9, "leakage": 0.9, "duplicates": 0.99},
}


def threshold(filter_name: str, embedder: Embedder, value: float | None) -> float:
    """``value`` if given, else the default of ``filter_name`` for this embedder."""
    return value if value is not None else default_threshold(filter_name, embedder.name)


def default_threshold(filter_name: str, embedder_name: str) -> float:
    """The default threshold of ``filter_name`` for the embedder called ``embedder_name``."""
    try:
        return DEFAULT_THRESHOLDS[embedder_name][filter_name]
    except KeyError:
        raise UserInputError(
            f"filter '{filter_name}' has no default threshold for embedder '{embedder_name}'; set it in the recipe"
        ) from None


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def embed_candidates(embedder: Embedder, batch: Sequence[Candidate], filter_name: str) -> list[Candidate]:
    """Make sure every accepted candidate has ``embeddings[embedder.space]``; return those that do.

    Embeddings are computed once per candidate and space, whichever filter asks first; a
    candidate with a ``face`` (from the face filter) is embedded on that face, otherwise the
    embedder detects the largest face itself, and a candidate with none is rejected.
    """
    space = embedder.space
    todo = [c for c in batch if c.accepted and space not in c.embeddings]
    with_face = [c for c in todo if c.face is not None and c.image is not None]
    without = [c for c in todo if c.face is None]
    for c in todo:
        if c.image is None:
            c.reject(filter_name, "unreadable image")
    if with_face:
        vectors = embedder.embed_faces([to_rgb(c.image) for c in with_face], [c.face for c in with_face])
        for c, v in zip(with_face, vectors, strict=True):
            c.embeddings[space] = v
    without = [c for c in without if c.accepted]
    if without:
        vectors = embedder.embed_images([to_rgb(c.image) for c in without])
        for c, v in zip(without, vectors, strict=True):
            if np.isnan(v).any():
                c.reject(filter_name, "no face")
            else:
                c.embeddings[space] = v
    return [c for c in batch if c.accepted and space in c.embeddings]


def accepted_centroid(context: FilterContext, space: str, identity: int) -> np.ndarray | None:
    """Unit mean of the ``space`` embeddings accepted so far for ``identity`` in this unit, or None."""
    accepted = context.accepted_embeddings.get(space, {}).get(identity)
    if not accepted:
        return None
    return unit(np.mean(np.stack(accepted), axis=0))


def in_generator_space(embedder: Embedder, context: FilterContext) -> bool:
    """True when the bank vectors live in this embedder's space (compare to them directly).

    Spaces are compared by model-file hash: an ArcFace of other weights (buffalo_l's w600k_r50
    against Arc2Face's arcface.onnx) is a different space even with the same embedder name.
    """
    if context.generator_space != embedder.space or context.bank_vectors is None:
        return False
    return context.bank_vectors.ndim == 2 and context.bank_vectors.shape[1] == embedder.dim


class EmbeddingFilter:
    """Base of the filters that compare face embeddings; ``embedder`` is a name or a mapping."""

    name = "embedding"
    dataset_pass = None  # no check across units

    def __init__(self, options: Any) -> None:
        self.options = options
        self.embedder: Embedder = get_embedder(options.embedder)
        self.embedder_name = split_spec(options.embedder)[0]

    @property
    def space(self) -> str:
        """The embedding space this filter scores in (its embedder's)."""
        return self.embedder.space

    def embeddings(self, batch: Sequence[Candidate]) -> list[Candidate]:
        return embed_candidates(self.embedder, batch, self.name)

    def accept(self, candidate: Candidate, context: FilterContext) -> None:
        """Nothing to do: the pipeline appends accepted embeddings to ``context.accepted_embeddings``."""
