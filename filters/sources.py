"""Identities for ``facesynth filter INPUT``, one at a time, through the shared readers (``facesynth.readers``)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from facesynth.readers import open_dataset

# (identity name, [(image name, image or None when unreadable)])
Identity = tuple[str, list[tuple[str, Image.Image | None]]]


def open_image(data: bytes | str | Path) -> Image.Image | None:
    """Decode an image fully (so a truncated file fails here), or None when it cannot be read."""
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        image.load()
        return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def iter_source(path: str | Path) -> Iterator[Identity]:
    """Identities of any dataset ``open_dataset`` reads (image folder, parquet, RecordIO, LMDB)."""
    dataset = open_dataset(path)
    try:
        for identity, indices in dataset.identities():
            yield identity, [(dataset.name(int(i)), open_image(dataset.read(int(i)))) for i in indices]
    finally:
        dataset.close()
