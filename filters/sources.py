"""Identities for ``facesynth filter INPUT``, one at a time, through the shared readers (``facesynth.readers``)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from facesynth.readers import open_dataset


@dataclass(frozen=True)
class Unreadable:
    """An input image that could not be decoded, and why (the decoder's own words)."""

    reason: str


# (identity name, [(image name, image, or why it is unreadable)])
Identity = tuple[str, list[tuple[str, Image.Image | Unreadable]]]


def open_image(data: bytes | str | Path) -> Image.Image | Unreadable:
    """Decode an image fully (so a truncated file fails here), or say why it cannot be read."""
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        image.load()
        return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        # The reason lands in rejected.parquet: drop object reprs (memory addresses) so it is deterministic.
        message = re.sub(r" ?<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc))
        return Unreadable(" ".join(f"{exc.__class__.__name__}: {message}".split()))


def iter_source(path: str | Path) -> Iterator[Identity]:
    """Identities of any dataset ``open_dataset`` reads (image folder, parquet, RecordIO, LMDB)."""
    dataset = open_dataset(path)
    try:
        for identity, indices in dataset.identities():
            yield identity, [(dataset.name(int(i)), open_image(dataset.read(int(i)))) for i in indices]
    finally:
        dataset.close()
