"""Identity samplers: where candidate identity vectors come from.

A sampler only proposes; ``facesynth.identity.bank.build_bank`` keeps the candidates that are
far enough from each other and from the gallery. Infinite samplers draw from the given
``numpy.random.Generator``; finite ones (``file``, ``images``) return their rows in order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from facesynth.errors import UserInputError
from facesynth.faces.gallery import load_vectors
from facesynth.registry import StrictOptions
from facesynth.separation import row_norms64

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class SphereSampler:
    """Uniform random unit vectors (IDiff-Face's synthetic identities)."""

    names: list[str] | None = None  # anonymous candidates
    space: str | None = None  # vectors of no known embedder

    class Options(StrictOptions):
        dim: int = Field(512, ge=2, description="vector dimension (512 for ArcFace-conditioned generators)")

    def __init__(self, options: Options) -> None:
        self.options = options
        self.dim = options.dim

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        x = rng.standard_normal((count, self.dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


class GaussianSampler:
    """A Gaussian (full covariance or PCA) fitted to a reference file of embeddings, e.g. real identity centres.

    With ``normalize: false`` the vectors keep the scale of the reference (Vec2Face samples
    un-normalised vectors); separation is always measured by cosine.
    """

    names: list[str] | None = None  # anonymous candidates
    space: str | None = None  # vectors of no known embedder

    class Options(StrictOptions):
        reference: Path = Field(description="embeddings to fit: .npy, .safetensors or .parquet [N, D]")
        components: int | None = Field(
            None,
            ge=1,
            description="keep this many principal components (PCA-Gaussian); default: full covariance",
        )
        shrinkage: float = Field(
            1e-3, ge=0, le=1, description="blend the covariance with its mean variance (helps when N < D)"
        )
        scale: float = Field(
            1.0, gt=0, description="multiply the covariance by scale^2 (wider or narrower prior)"
        )
        normalize: bool = Field(True, description="return unit vectors; false keeps the reference's scale")

    def __init__(self, options: Options) -> None:
        self.options = options
        reference = np.asarray(
            load_vectors(options.reference, "gaussian sampler reference"), dtype=np.float64
        )
        n, dim = reference.shape
        if n < 2:
            raise UserInputError(
                f"gaussian sampler reference {options.reference} needs at least 2 vectors, has {n}"
            )
        if options.components is not None and options.components > dim:
            raise UserInputError(
                f"gaussian sampler components={options.components} exceeds the dimension {dim}"
            )
        self.dim = dim
        self.mean = reference.mean(axis=0)
        centred = reference - self.mean
        cov = centred.T @ centred / (n - 1)
        cov = (1 - options.shrinkage) * cov + options.shrinkage * np.trace(cov) / dim * np.eye(dim)
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1][: options.components or dim]
        # x = mean + z @ factor, z ~ N(0, I): factor rows are principal axes scaled by their std.
        self.factor = (vectors[:, order] * np.sqrt(np.clip(values[order], 0, None)) * options.scale).T.astype(
            np.float32
        )
        self.mean32 = self.mean.astype(np.float32)

    @classmethod
    def from_moments(cls, mean: np.ndarray, factor: np.ndarray, normalize: bool = True) -> GaussianSampler:
        """A sampler of ``mean + z @ factor`` (z standard normal), without a reference file."""
        self = cls.__new__(cls)
        self.options = None  # type: ignore[assignment]
        self.mean32 = np.asarray(mean, dtype=np.float32)
        self.factor = np.asarray(factor, dtype=np.float32)
        self.dim = int(self.factor.shape[1])
        self._normalize = normalize
        return self

    @property
    def normalize(self) -> bool:
        return self.options.normalize if self.options is not None else self._normalize

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        z = rng.standard_normal((count, self.factor.shape[0]), dtype=np.float32)
        x = z @ self.factor + self.mean32
        if self.normalize:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


class FileSampler:
    """Candidates read in order from a file of vectors (.npy, .safetensors or .parquet)."""

    names: list[str] | None = None  # anonymous candidates
    space: str | None = None  # vectors of no known embedder

    class Options(StrictOptions):
        path: Path = Field(description="file of vectors [N, D]")
        column: str | None = Field(None, description="parquet list column (default: the first one)")
        shuffle: bool = Field(False, description="visit the rows in a seeded random order")

    def __init__(self, options: Options) -> None:
        self.options = options
        self.vectors = load_vectors(options.path, "sampler file", options.column)
        row_norms64(self.vectors, f"sampler file {options.path}")  # NaN and zero rows fail here, with the row
        self.dim = int(self.vectors.shape[1])
        self._order: np.ndarray | None = None
        self._next = 0

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        if self._order is None:
            n = len(self.vectors)
            self._order = rng.permutation(n) if self.options.shuffle else np.arange(n)
        take = self._order[self._next : self._next + count]
        self._next += len(take)
        return np.asarray(
            self.vectors[np.sort(take)] if not self.options.shuffle else self.vectors[take], np.float32
        )


class ImagesSampler:
    """One identity per subfolder of face images: the normalised mean of its images' embeddings.

    Images where the embedder finds no face are skipped; a folder with no usable face is an error.
    ``agreement[i]`` is the mean cosine of folder i's image embeddings to their identity vector.
    """

    class Options(StrictOptions):
        root: Path = Field(description="folder with one subfolder of face images per identity")
        embedder: Any = Field("dlib", description="embedder name or {name: ..., <options>}")
        max_images_per_identity: int | None = Field(None, ge=1)

        @field_validator("embedder")
        @classmethod
        def _embedder_spec(cls, value: Any) -> dict[str, Any]:
            if isinstance(value, str):
                return {"name": value}
            if isinstance(value, dict) and isinstance(value.get("name"), str):
                return dict(value)
            raise ValueError("give an embedder name, e.g. 'dlib', or a mapping {name: ..., <options>}")

    def __init__(self, options: Options, embedder: Any = None) -> None:
        from facesynth.faces import load_embedder

        self.options = options
        root = options.root
        if not root.is_dir():
            raise UserInputError(f"images sampler root {root} is not a folder")
        self.folders = sorted(p for p in root.iterdir() if p.is_dir())
        if not self.folders:
            raise UserInputError(
                f"images sampler root {root} has no subfolders; put each identity's images in its own"
            )
        spec = dict(options.embedder)
        self.embedder = embedder or load_embedder(spec.pop("name"), **spec)
        self.dim = int(self.embedder.dim)
        self.space: str | None = self.embedder.space
        self.names = [p.name for p in self.folders]
        self._vectors: np.ndarray | None = None
        self.agreement: np.ndarray | None = None
        self._next = 0

    def _embed_all(self) -> np.ndarray:
        from PIL import Image

        vectors, agreement = [], []
        for folder in self.folders:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            files = files[: self.options.max_images_per_identity]
            if not files:
                raise UserInputError(f"identity folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
            images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
            emb = np.asarray(self.embedder.embed_images(images), dtype=np.float64)
            emb = emb[np.isfinite(emb).all(axis=1)]
            if len(emb) == 0:
                raise UserInputError(f"no face was found in any image of identity folder {folder}")
            if len(emb) < len(files):
                log.warning("%s: no face in %d of %d images", folder, len(files) - len(emb), len(files))
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            centre = emb.mean(axis=0)
            centre /= np.linalg.norm(centre)
            vectors.append(centre)
            agreement.append(float((emb @ centre).mean()))
        self.agreement = np.array(agreement)
        return np.array(vectors, dtype=np.float32)

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = self._embed_all()
        return self._vectors

    def draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        take = self.vectors[self._next : self._next + count]
        self._next += len(take)
        return take
