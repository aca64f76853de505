"""The small typed interfaces through which the stages talk to each other.

Data flows one way: an ``IdentitySampler`` draws identity vectors, a ``Generator`` renders
images from them, ``Filter``s score and reject ``Candidate`` images, and the writer stores
what survives. ``Detector`` and ``Embedder`` are the face models the filters and the
``images`` sampler share (``facesynth.faces``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

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
    """Turns faces into L2-normalised identity vectors of dimension ``dim``.

    ``space`` names the vector space: ``"<family>:<sha256 of the model file(s)>"``
    (``facesynth.faces.models.embedding_space``). Vectors are cached and compared by space,
    never by ``name``: two ArcFace files are two spaces, one file loaded by two embedders is one.
    """

    name: str
    dim: int
    space: str

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
    ``names`` is None for anonymous candidates. ``space`` is the ``Embedder.space`` of the vectors
    when the sampler knows it (the ``images`` sampler's embedder), else None.
    """

    dim: int
    names: list[str] | None
    space: str | None

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
    embedding_space: str | None  # the Embedder.space its vectors live in (from its weights), if any
    # "unit": only the direction of a vector matters (the generator normalises it); "raw": it takes
    # un-normalised features whose norm carries meaning (Vec2Face: ArcFace features of norm ~20-30).
    input_scale: ClassVar[Literal["unit", "raw"]]
    # Per-image numbers the generator reports (e.g. whether an optimisation converged); written
    # as dataset columns. Empty for most generators.
    score_columns: tuple[str, ...]
    uses_prompts: ClassVar[bool]  # whether ``generate`` follows per-image text prompts

    @classmethod
    def image_size(cls, options: Any) -> int:
        """Side in pixels of the square images made with the validated ``options``, without loading.

        Sizes the units before the generator is loaded; where the weights decide (a checkpoint's
        config), the published size.
        """
        ...

    @classmethod
    def check_weights(cls, options: Any) -> None:
        """Raise ``ModelNotFoundError`` when a weight file the ``options`` name is missing; loads nothing.

        Run before the identity bank is built, so a missing weight fails in seconds, not after the
        bank: the message names the Hub repo or folder and how to pre-download it.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """What made the images, as loaded (resolved weights and revisions, steps, dtype, ...), with
        ``dtype``, ``batch_invariant`` and the ``device`` it runs on (``facesynth.conditions`` reads them).

        Recorded in every unit's done-marker and the card; ``finalize`` refuses units whose
        descriptions differ in anything but ``*_path`` keys and ``device``.
        """
        ...

    def generate(
        self,
        vectors: np.ndarray,
        seeds: Sequence[int],
        prompts: Sequence[str] | None = None,
    ) -> list[Image.Image]: ...

    def image_scores(self) -> list[dict[str, float]]:
        """The ``score_columns`` values of the images of the last ``generate`` call, in order."""
        ...


@runtime_checkable
class RefinesIdentities(Protocol):
    """A generator that adjusts each identity's vector once before its images are made.

    Vec2Face's AttrOP refines identity centres (HSFace). ``refine_identities`` returns the new
    vectors and a record per vector (values for the generator's ``score_columns``), and must
    depend only on each vector and its seed.
    """

    refines_identities: bool

    def refine_identities(
        self, vectors: np.ndarray, seeds: Sequence[int]
    ) -> tuple[np.ndarray, list[dict[str, float]]]: ...


@runtime_checkable
class BankConditionedGenerator(Protocol):
    """A ``Generator`` whose images may also depend on the other identities of the bank.

    Negative-identity guidance (NegFaceDiff) steers image ``i`` away from another bank identity,
    so the pipeline calls ``generate_in_bank`` instead of ``generate``, with each image's bank index.
    Image ``i`` stays a function of its vector, seed, identity, the bank and the options only.
    """

    def generate_in_bank(
        self,
        vectors: np.ndarray,
        seeds: Sequence[int],
        identities: Sequence[int],
        bank_vectors: np.ndarray,
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
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # Embedder.space -> unit vector
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

    ``accepted_embeddings[space][identity]`` (``space`` = ``Embedder.space``) lists the embeddings of the images already
    accepted for that identity in this unit (the pipeline appends after the last filter).
    """

    bank_vectors: np.ndarray  # [N, D] identity vectors of the whole bank
    unit_identities: Sequence[int]
    generator_space: str | None = None  # Embedder.space the generator is conditioned in, if any
    accepted_embeddings: dict[str, dict[int, list[np.ndarray]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


DatasetPass = Callable[[Any, np.ndarray, np.ndarray | None], dict[int, str]]


@runtime_checkable
class Filter(Protocol):
    """Scores a batch of candidates in place and rejects the ones that fail.

    A filter looks only at candidates still accepted, writes its scores into
    ``candidate.scores`` under the names in ``score_columns`` (NaN when not computed), and calls
    ``candidate.reject(self.name, reason)``. ``accept`` is called, in order, for every candidate
    that passed all filters, so stateful filters (duplicates, centroids) can remember it.
    The pipeline calls the filters with all of one identity's candidates of one round, in attempt
    order, identities in order: never a grouping that depends on the generator's batch size.

    ``dataset_pass`` is None, or a model-free check across units run by ``finalize`` on stored
    columns only (it never loads a face model): ``dataset_pass(options, identities, centroids)``
    with the filter's validated options, the kept identities (sorted) and their [K, D] centroids in the
    filter's ``space`` (None when no unit stored any); it returns the identities to drop with the reason.
    A filter with a dataset pass also has ``space``, the ``Embedder.space`` it scores in: each unit's
    done-marker records it, so ``finalize`` finds the centroids without building the filter.
    """

    name: str
    score_columns: ClassVar[tuple[str, ...]] | tuple[str, ...]
    dataset_pass: ClassVar[DatasetPass | None]

    def __call__(self, batch: Sequence[Candidate], context: FilterContext) -> None: ...

    def accept(self, candidate: Candidate, context: FilterContext) -> None: ...
