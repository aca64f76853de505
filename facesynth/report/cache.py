"""Embeddings (and per-image measures) of a dataset, computed once per dataset and embedding space.

A cache entry is a folder ``CACHE/<dataset name>-<key>/``:

- ``embeddings.npy``: float32 [N, D] unit rows, NaN where no face was found, **sorted by label**
  (then by content), so one identity's rows are contiguous and can be read a block of identities at a time;
- ``labels.npy`` (int64 [N], sorted) and ``index.npy`` (the dataset's image index of each row);
- ``measures.npz``: per-row ``blur``, ``yaw``, ``pitch``, ``roll``, ``det_score`` (NaN when unknown)
  and optional ``attributes/<name>`` columns;
- ``meta.json``: dataset path and format, embedding space, identity names, shape; written last,
  so its presence means the entry is complete.

The entry is written into a hidden sibling folder and renamed into place. Nothing is written next
to the dataset. The benchmark writes synthetic entries in this format (``write_entry``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facesynth.errors import UserInputError

CACHE_VERSION = 1


def entry_key(dataset_id: str, space: str, settings: dict[str, Any]) -> str:
    text = json.dumps([CACHE_VERSION, dataset_id, space, settings], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def slug(path: Path) -> str:
    name = path.name if path.name not in ("", "data.mdb") else path.parent.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "dataset"


@dataclass
class Entry:
    """A complete cache entry, read a block of rows at a time (embeddings stay on disk)."""

    folder: Path
    meta: dict[str, Any]
    labels: np.ndarray  # int64 [N] sorted
    index: np.ndarray  # int64 [N] dataset image index of each row
    measures: dict[str, np.ndarray]
    bounds: np.ndarray = field(init=False)  # [K + 1] row range of each identity

    def __post_init__(self) -> None:
        self.bounds = np.searchsorted(self.labels, np.arange(self.classes + 1))
        header = np.load(self.folder / "embeddings.npy", mmap_mode="r")
        self.dim = int(header.shape[1])
        self._offset = int(header.offset)
        del header

    @property
    def classes(self) -> int:
        return len(self.meta["identity_names"])

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Embedding rows ``start:stop``, read from the file (no memory map, so memory stays bounded)."""
        count = (stop - start) * self.dim
        with open(self.folder / "embeddings.npy", "rb") as f:
            f.seek(self._offset + 4 * start * self.dim)
            return np.fromfile(f, dtype="<f4", count=count).reshape(stop - start, self.dim)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Embedding rows at sorted positions ``rows``."""
        mapped = np.load(self.folder / "embeddings.npy", mmap_mode="r")
        out = np.asarray(mapped[np.asarray(rows)], dtype=np.float32)
        del mapped
        return out


def read_entry(folder: Path) -> Entry:
    meta = json.loads((folder / "meta.json").read_text())
    measures = dict(np.load(folder / "measures.npz"))
    return Entry(folder, meta, np.load(folder / "labels.npy"), np.load(folder / "index.npy"), measures)


def write_entry(
    folder: Path,
    embeddings: np.ndarray,
    labels: np.ndarray,
    measures: dict[str, np.ndarray],
    meta: dict[str, Any],
) -> Entry:
    """Write a complete entry (rows in dataset order; stored sorted by label) and return it."""
    # by label, then by content within a label: the same images in another format (another
    # storage order) give the same rows, so the same figures
    keys = [embeddings[:, d] for d in range(min(4, embeddings.shape[1]))][::-1]
    order = np.lexsort((*keys, labels))
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    np.save(partial / "embeddings.npy", np.ascontiguousarray(embeddings[order], dtype=np.float32))
    np.save(partial / "labels.npy", labels[order].astype(np.int64))
    np.save(partial / "index.npy", order.astype(np.int64))
    np.savez(partial / "measures.npz", **{k: np.asarray(v)[order] for k, v in measures.items()})
    (partial / "meta.json").write_text(json.dumps({"version": CACHE_VERSION, **meta}, indent=1) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(partial, folder)
    return read_entry(folder)


def find_entry(cache: Path, name: str, key: str) -> tuple[Path, Entry | None]:
    folder = Path(cache) / f"{name}-{key}"
    if (folder / "meta.json").is_file():
        try:
            return folder, read_entry(folder)
        except (OSError, ValueError, KeyError) as exc:
            raise UserInputError(f"cache entry {folder} is damaged ({exc}); delete it to recompute") from None
    return folder, None
