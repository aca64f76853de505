"""Readers for ``facesynth filter INPUT``: image folders and parquet datasets, one identity at a time."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from facesynth.errors import UserInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


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
        return Unreadable(" ".join(f"{exc.__class__.__name__}: {exc}".split()))


def iter_folder(root: Path) -> Iterator[Identity]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserInputError(f"{root} has no identity subfolders; expected {root}/<identity>/<image>.jpg")
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            yield folder.name, [(p.name, open_image(p)) for p in files]


def parquet_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(root.rglob("*.parquet"))


def iter_parquet(files: list[Path]) -> Iterator[Identity]:
    """Rows grouped by label, in the order labels first appear; images are kept encoded until yielded."""
    import pyarrow.parquet as pq

    groups: dict[str, list[tuple[str, bytes | None]]] = {}
    for path in files:
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise UserInputError(f"cannot read parquet file {path}: {str(exc).splitlines()[0]}") from None
        missing = {"image", "label"} - set(table.column_names)
        if missing:
            raise UserInputError(
                f"{path} lacks column(s) {', '.join(sorted(missing))}; expected columns image + label"
            )
        images = table.column("image").to_pylist()
        labels = table.column("label").to_pylist()
        for row, (cell, label) in enumerate(zip(images, labels, strict=True)):
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            name = (cell.get("path") if isinstance(cell, dict) else None) or f"{path.stem}-{row:06d}"
            groups.setdefault(str(label), []).append((str(name), data if isinstance(data, bytes) else None))
    for label, rows in groups.items():
        yield (
            label,
            [
                (name, open_image(data) if data is not None else Unreadable("no image bytes in the row"))
                for name, data in rows
            ],
        )


def iter_source(path: str | Path) -> Iterator[Identity]:
    """Identities of an image folder (one subfolder per identity) or of a parquet dataset (image + label)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserInputError(f"input {root} does not exist; give an image folder or a parquet dataset")
    files = parquet_files(root)
    if files:
        yield from iter_parquet(files)
    elif root.is_dir():
        yield from iter_folder(root)
    else:
        raise UserInputError(f"cannot read {root}: expected an image folder or .parquet file(s)")
