"""A gallery of real-identity vectors (up to millions), and exact nearest-gallery cosines against it.

The leakage guard of the bank builder and the leakage filter both ask one question: how close is
each query to any gallery vector? ``Gallery`` answers it exactly, scanning the gallery in blocks
with the bfloat16 screen of ``facesynth.separation`` and re-checking in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from facesynth.errors import UserInputError
from facesynth.fingerprint import file_sha256
from facesynth.separation import (
    Screen,
    WindowMax,
    check_vectors,
    exact_cosine,
    fp32_accumulation,
    resolve_device,
    row_norms64,
    screen_against,
    screen_margin,
)

VECTOR_SUFFIXES = (".npy", ".safetensors", ".parquet")
_TENSOR_NAMES = ("vectors", "embeddings", "embedding")
SPACE_KEY = "embedding_space"  # safetensors metadata: the Embedder.space a gallery was made in


def save_gallery(path: str | Path, vectors: np.ndarray, space: str) -> Path:
    """Write a gallery as .safetensors (tensor ``vectors``) recording the ``Embedder.space`` it was made in."""
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserInputError(
            f"gallery {path}: facesynth writes galleries as .safetensors (they record their space)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"vectors": np.ascontiguousarray(vectors, dtype=np.float32)}, str(path), metadata={SPACE_KEY: space}
    )
    return path


def recorded_space(path: str | Path) -> str | None:
    """The ``Embedder.space`` a gallery file records (a .safetensors written by facesynth), else None."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return (f.metadata() or {}).get(SPACE_KEY)


def load_vectors(path: str | Path, what: str = "vectors", column: str | None = None) -> np.ndarray:
    """Read an [N, D] float array from .npy (memory-mapped), .safetensors or .parquet (a list column)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{what} file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix == ".safetensors":
            array = _load_safetensors(path, what)
        elif suffix == ".parquet":
            array = _load_parquet(path, what, column)
        else:
            raise UserInputError(
                f"{what} file {path} has unsupported suffix '{path.suffix}'; use one of {', '.join(VECTOR_SUFFIXES)}"
            )
    except UserInputError:
        raise
    except Exception as exc:  # numpy, safetensors and pyarrow raise many kinds of errors on bad files
        raise UserInputError(f"cannot read {what} file {path}: {type(exc).__name__}: {exc}") from None
    return check_vectors(array, f"{what} in {path}")


def _load_safetensors(path: Path, what: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        names = list(f.keys())
        name = next((n for n in _TENSOR_NAMES if n in names), names[0] if len(names) == 1 else None)
        if name is None:
            raise UserInputError(
                f"{what} file {path} holds tensors {names}; name the vectors tensor 'vectors' or keep only one"
            )
        return f.get_tensor(name)


def _load_parquet(path: Path, what: str, column: str | None) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if column is None:
        lists = [
            f.name for f in table.schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
        ]
        preferred = [n for n in _TENSOR_NAMES if n in lists]
        if not lists:
            raise UserInputError(
                f"{what} file {path} has no list column of vectors (columns: {table.column_names})"
            )
        column = preferred[0] if preferred else lists[0]
    if column not in table.column_names:
        raise UserInputError(f"{what} file {path} has no column '{column}' (columns: {table.column_names})")
    col = table.column(column).combine_chunks()
    if col.null_count:
        raise UserInputError(f"{what} file {path} column '{column}' has {col.null_count} missing rows")
    lengths = pc.list_value_length(col).to_numpy()
    if len(lengths) == 0:
        return np.empty((0, 0), dtype=np.float32)
    if (lengths != lengths[0]).any():
        raise UserInputError(f"{what} file {path} column '{column}' has vectors of different lengths")
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    return values.reshape(len(lengths), int(lengths[0]))


class Gallery:
    """Real-identity vectors read from a file; ``max_cosine`` gives exact nearest-gallery cosines.

    ``.npy`` files are memory-mapped, so a gallery of millions of vectors costs little memory
    beyond a bfloat16 copy of its unit rows (built on first use, half the file's size).
    """

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "auto",
        column: str | None = None,
        block_rows: int = 65536,
    ) -> None:
        self.path = Path(path)
        self.vectors = load_vectors(self.path, "gallery", column)
        self.norms = row_norms64(self.vectors, f"gallery {self.path}")
        self.device = resolve_device(device)
        self.block_rows = block_rows
        self._screen: Screen | None = None
        self._sha256: str | None = None
        self.space = recorded_space(self.path)  # None for files that do not record it (e.g. .npy)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def check_space(self, space: str | None, dim: int, user: str) -> None:
        """Refuse a gallery made in another embedding space than ``space`` (the space ``user`` compares in).

        A gallery that records no space (a user's .npy) is only checked for its dimension.
        """
        if self.space is not None and space is not None and self.space != space:
            raise UserInputError(
                f"gallery {self.path} was embedded in space {self.space} but {user} compares in space "
                f"{space}; embed the gallery with the same model (facesynth gallery --embedder ...)"
            )
        if self.dim != dim:
            raise UserInputError(
                f"gallery {self.path} holds {self.dim}-d vectors but {user} gives {dim}-d ones; "
                "embed the gallery with the same model"
            )

    @property
    def sha256(self) -> str:
        """SHA-256 of the gallery file, recorded in the bank's provenance."""
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    @property
    def screen(self) -> Screen:
        if self._screen is None:
            self._screen = Screen.of(self.vectors, self.norms, self.device, self.block_rows)
        return self._screen

    def _blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        low = self.screen.low
        for start in range(0, len(self), self.block_rows):
            yield start, low[start : start + self.block_rows]

    def _queries(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, Screen]:
        queries = check_vectors(queries, "gallery queries")
        if queries.shape[1] != self.dim:
            raise UserInputError(
                f"gallery {self.path} holds {self.dim}-d vectors but the queries are {queries.shape[1]}-d; "
                "use a gallery embedded with the same model as the identities"
            )
        norms = row_norms64(queries, "gallery queries")
        return queries, norms, Screen.of(queries, norms, self.device)

    @fp32_accumulation()
    def max_cosine(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact (float64) largest cosine of each query to the gallery, and the gallery row reaching it."""
        queries, norms, screen = self._queries(queries)
        n = len(queries)
        tracker = WindowMax(n, screen_margin(screen.err, self.screen.err, self.dim), self.device)
        rows = max(1, min(n, 8192))
        width = max(1024, (1 << 25) // rows)
        for q in range(0, n, rows):
            for offset, block in self._blocks():
                for c in range(0, len(block), width):
                    tracker.add(screen.low[q : q + rows] @ block[c : c + width].T, q, offset + c)
        return tracker.finish(exact_cosine(queries, norms, self.vectors, self.norms))

    def too_close(self, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Which queries have a gallery vector at cosine >= ``threshold`` (exact), cheaper than ``max_cosine``.

        Also returns each passing query's largest screened cosine (NaN for failing ones).
        """
        queries, norms, screen = self._queries(queries)
        return screen_against(
            screen,
            self._blocks(),
            self.screen.err,
            threshold,
            exact_cosine(queries, norms, self.vectors, self.norms),
            strict=False,
        )
