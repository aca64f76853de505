"""The small typed interfaces through which the stages talk to each other.

Data flows one way: an ``IdentitySampler`` draws identity vectors, a ``Generator`` renders
images from them, ``Filter``s score and reject ``Candidate`` images, and the writer stores
what survives. ``Detector`` and ``Embedder`` are the face models the filters and the
``images`` sampler share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class Face:
    """One detected face: where it is, its five landmarks, and (once aligned) its crop.

    Landmarks are (x, y) in image pixels, ordered as insightface orders them: left eye,
    right eye, nose tip, left mouth corner, right mouth corner (left/right as seen in the image).
    """

    box: np.ndarray  # [4] x0, y0, x1, y1
    landmarks: np.ndarray  # [5, 2]
    score: float
    aligned: np.ndarray | None = None  # [S, S, 3] uint8 RGB crop on the ArcFace template


@runtime_checkable
class Detector(Protocol):
    """Finds faces in an RGB uint8 image."""

    def detect(self, image: np.ndarray) -> list[Face]: ...


@runtime_checkable
class Embedder(Protocol):
    """Turns faces into L2-normalised identity vectors of dimension ``dim``."""

    name: str
    dim: int

    def embed_faces(self, images: Sequence[np.ndarray], faces: Sequence[Face]) -> np.ndarray:
        """Embed ``faces[i]`` found in ``images[i]``; returns float32 [N, dim], rows unit-norm."""
        ...

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Detect the largest face of each image and embed it; rows with no face are NaN."""
        ...


@runtime_checkable
class IdentitySampler(Protocol):
    """Proposes candidate identity vectors; the bank builder decides which to keep.

    ``names[k]`` names the k-th candidate ever drawn (a folder of the ``images`` sampler), or
    ``names`` is None for anonymous candidates.
    """

    dim: int
    names: list[str] | None

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Return float32 [count, dim] candidates (fewer only when a finite source runs out)."""
        ...


@runtime_checkable
class Generator(Protocol):
    """Renders one image per (vector, seed, prompt).

    Image ``i`` depends only on ``vectors[i]``, ``seeds[i]``, ``prompts[i]`` and the options,
    never on batch composition: its initial noise comes from
    ``torch.Generator("cpu").manual_seed(seeds[i])``.
    """

    name: str
    dim: int
    batch_size: int
    uses_prompts: ClassVar[bool]  # whether ``generate`` follows per-image text prompts

    def describe(self) -> dict[str, Any]:
        """What made the images, as loaded (resolved weights and revisions, steps, dtype, ...).

        Recorded in every unit's done-marker and the card; ``finalize`` refuses units whose
        descriptions differ in anything but ``*_path`` keys.
        """
        ...

    def generate(
        self,
        vectors: np.ndarray,
        seeds: Sequence[int],
        prompts: Sequence[str] | None = None,
    ) -> list[Image.Image]: ...


@dataclass
class Candidate:
    """One generated image on its way through the filters."""

    identity: int  # index in the identity bank
    attempt: int  # 0, 1, 2, ... per identity; with the recipe seed it fixes everything else
    seed: int
    vector: np.ndarray  # the conditioning vector actually used (after variation)
    prompt: str | None = None
    variation_cosine: float = 1.0
    image: Image.Image | None = None
    face: Face | None = None
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # embedder name -> unit vector
    scores: dict[str, float] = field(default_factory=dict)  # column name -> value
    rejected_by: str | None = None
    reason: str | None = None
    source: str | None = None  # file name in the input dataset, when filtering an existing one

    @property
    def accepted(self) -> bool:
        return self.rejected_by is None

    def reject(self, filter_name: str, reason: str) -> None:
        if self.rejected_by is None:
            self.rejected_by, self.reason = filter_name, reason


@dataclass
class FilterContext:
    """What a filter may know beyond the batch: the bank, and what was accepted so far.

    ``accepted_embeddings[embedder][identity]`` lists the embeddings of the images already
    accepted for that identity in this unit (the pipeline appends after the last filter).
    """

    bank_vectors: np.ndarray  # [N, D] identity vectors of the whole bank
    unit_identities: Sequence[int]
    generator_space: str | None = None  # embedder name whose space the generator is conditioned in
    accepted_embeddings: dict[str, dict[int, list[np.ndarray]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


DatasetPass = Callable[[Any, np.ndarray, dict[str, np.ndarray]], dict[int, str]]


@runtime_checkable
class Filter(Protocol):
    """Scores a batch of candidates in place and rejects the ones that fail.

    A filter looks only at candidates still accepted, writes its scores into
    ``candidate.scores`` under the names in ``score_columns`` (NaN when not computed), and calls
    ``candidate.reject(self.name, reason)``. ``accept`` is called, in order, for every candidate
    that passed all filters, so stateful filters (duplicates, centroids) can remember it.

    ``dataset_pass`` is None, or a model-free check across units run by ``finalize`` on stored
    columns only (it never loads a face model): ``dataset_pass(options, identities, centroids)``
    with the filter's validated options, the kept identities (sorted) and, per embedding key, their
    [K, D] centroids; it returns the identities to drop with the reason.
    """

    name: str
    score_columns: ClassVar[tuple[str, ...]] | tuple[str, ...]
    dataset_pass: ClassVar[DatasetPass | None]

    def __call__(self, batch: Sequence[Candidate], context: FilterContext) -> None: ...

    def accept(self, candidate: Candidate, context: FilterContext) -> None: ...
