"""Training data: facesynth parquet datasets read by row group, decoded and augmented in DataLoader workers.

Any reader with ``__len__``, ``labels`` (int array) and ``read(i) -> encoded image bytes`` plugs into
``FaceDataset`` (``ParquetReader`` here; ImageFolder/RecordIO/LMDB readers have the same shape).

Order and augmentation are functions of (seed, epoch, position) only, so a run resumes at the exact
batch it stopped at and an image's augmentation does not depend on the worker count or batch size.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageEnhance, ImageOps

from facesynth import layout
from facesynth.errors import UserInputError
from facesynth.readers import open_parquet


class FaceReader(Protocol):
    """Random access to a labelled face dataset: encoded image bytes by row."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def read(self, index: int) -> bytes: ...


class ParquetReader:
    """Rows of facesynth parquet shards; keeps the last few decoded row groups (image column only)."""

    def __init__(self, root: str | Path, cache_groups: int = 4) -> None:
        root = Path(root)
        files = [root] if root.is_file() else sorted((root / layout.DATA).glob("*.parquet"))
        if not files and root.is_dir():
            files = sorted(root.glob("*.parquet"))
        if not files:
            raise UserInputError(
                f"{root}: no parquet shards (expected a facesynth dataset with {layout.DATA}/*.parquet)"
            )
        self.files = files
        groups, labels = [], []
        for path in files:
            parquet = open_parquet(path)
            for g in range(parquet.num_row_groups):
                groups.append((path, g))
                labels.append(parquet.read_row_group(g, columns=["label"]).column(0).to_numpy())
        self.groups = groups
        self.group_sizes = np.array([len(x) for x in labels], dtype=np.int64)
        self.group_starts = np.concatenate([[0], np.cumsum(self.group_sizes)])
        raw = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        # facesynth labels are dense 0..K-1 already; anything else is renumbered in sorted order.
        self.labels = np.unique(raw, return_inverse=True)[1].astype(np.int64).reshape(-1)
        self.cache_groups = cache_groups
        self._cache: OrderedDict[int, list] = OrderedDict()

    def __len__(self) -> int:
        return len(self.labels)

    def _group(self, g: int) -> list:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        path, index = self.groups[g]
        cells = pq.ParquetFile(path).read_row_group(index, columns=["image"]).column(0).to_pylist()
        self._cache[g] = cells
        while len(self._cache) > self.cache_groups:
            self._cache.popitem(last=False)
        return cells

    def read(self, index: int) -> bytes:
        g = int(np.searchsorted(self.group_starts, index, side="right") - 1)
        cell = self._group(g)[index - self.group_starts[g]]
        return cell["bytes"] if isinstance(cell, dict) else cell


def open_reader(path: str | Path) -> FaceReader:
    """The reader for a dataset: parquet by row group here; ImageFolder, RecordIO, LMDB via facesynth.readers."""
    from facesynth.readers import detect_format, open_dataset

    root = Path(path).expanduser()
    if not root.exists():
        raise UserInputError(f"dataset {root} does not exist")
    if detect_format(root) == "parquet":
        return ParquetReader(root)
    return open_dataset(root)


def row_groups(reader: FaceReader) -> list[int]:
    """Sizes of the blocks a shuffle should keep together: parquet row groups; one block otherwise."""
    return reader.group_sizes.tolist() if isinstance(reader, ParquetReader) else [len(reader)]


def reopen(reader: FaceReader) -> Callable[[], FaceReader] | None:
    """How a DataLoader worker gets its own reader (file handles must not be shared across processes)."""
    if isinstance(reader, ParquetReader):
        return None  # opens its files per read
    return functools.partial(open_reader, reader.path)


# ----------------------------------------------------------------------------- order


def epoch_order(group_sizes: Sequence[int], seed: int, epoch: int, window: int = 4) -> np.ndarray:
    """All row indices in a shuffled order that visits row groups a window at a time.

    Row groups are shuffled, then rows are shuffled within each window of ``window`` consecutive
    (shuffled) groups, so a worker only ever holds a few groups while a batch still mixes ~window
    groups' identities.
    """
    rng = np.random.default_rng([seed, epoch])
    starts = np.concatenate([[0], np.cumsum(group_sizes)])
    perm = rng.permutation(len(group_sizes))
    order = []
    for w in range(0, len(perm), window):
        rows = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in perm[w : w + window]])
        order.append(rng.permutation(rows))
    return np.concatenate(order) if order else np.zeros(0, np.int64)


class EpochBatches(torch.utils.data.Sampler):
    """Batches of (epoch, position, row) for one epoch, from batch ``start`` on; rank r takes every world-th."""

    def __init__(
        self,
        group_sizes: Sequence[int],
        batch_size: int,
        seed: int,
        epoch: int,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
        window: int = 4,
    ) -> None:
        self.order = epoch_order(group_sizes, seed, epoch, window)
        self.batch_size, self.epoch, self.start, self.rank, self.world = batch_size, epoch, start, rank, world

    @staticmethod
    def steps(num_rows: int, batch_size: int, world: int) -> int:
        """Optimiser steps per epoch (incomplete global batches are dropped)."""
        return num_rows // (batch_size * world)

    def __len__(self) -> int:
        return self.steps(len(self.order), self.batch_size, self.world) - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        global_batch = self.batch_size * self.world
        for step in range(self.start, self.start + len(self)):
            begin = step * global_batch + self.rank * self.batch_size
            yield [(self.epoch, p, int(self.order[p])) for p in range(begin, begin + self.batch_size)]


# ----------------------------------------------------------------------------- augmentation


def _rand_augment_ops(size: tuple[int, int], bins: int, variant: str) -> dict[str, np.ndarray | None]:
    """RandAugment's operations and magnitude tables (signed ones flip sign at random).

    ``torchvision``: torchvision's 14 operations. ``idiff-face``: IDiff-Face's training copy
    (face_recognition_training/utils/rand_augment.py): no ShearY/TranslateY, plus Grayscale.
    """
    w, h = size
    ops: dict[str, np.ndarray | None] = {
        "Identity": None,
        "ShearX": np.linspace(0.0, 0.3, bins),
        "ShearY": np.linspace(0.0, 0.3, bins),
        "TranslateX": np.linspace(0.0, 150.0 / 331.0 * w, bins),
        "TranslateY": np.linspace(0.0, 150.0 / 331.0 * h, bins),
        "Rotate": np.linspace(0.0, 30.0, bins),
        "Brightness": np.linspace(0.0, 0.9, bins),
        "Color": np.linspace(0.0, 0.9, bins),
        "Contrast": np.linspace(0.0, 0.9, bins),
        "Sharpness": np.linspace(0.0, 0.9, bins),
        "Posterize": 8 - np.round(np.arange(bins) / ((bins - 1) / 4)).astype(int),
        "Solarize": np.linspace(255.0, 0.0, bins),
        "AutoContrast": None,
        "Equalize": None,
    }
    if variant == "idiff-face":
        del ops["ShearY"], ops["TranslateY"]
        ops["Grayscale"] = None
    return ops


_SIGNED = {
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
}


def _apply_op(img: Image.Image, op: str, mag: float) -> Image.Image:
    if op == "ShearX":
        return img.transform(img.size, Image.AFFINE, (1, mag, -mag * img.size[1] / 2, 0, 1, 0), Image.NEAREST)
    if op == "ShearY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, mag, 1, -mag * img.size[0] / 2), Image.NEAREST)
    if op == "TranslateX":
        return img.transform(img.size, Image.AFFINE, (1, 0, -int(mag), 0, 1, 0), Image.NEAREST)
    if op == "TranslateY":
        return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, -int(mag)), Image.NEAREST)
    if op == "Rotate":
        return img.rotate(mag, resample=Image.NEAREST)
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return getattr(ImageEnhance, op)(img).enhance(1.0 + mag)
    if op == "Posterize":
        return ImageOps.posterize(img, int(mag))
    if op == "Solarize":
        return ImageOps.solarize(img, mag)
    if op == "AutoContrast":
        return ImageOps.autocontrast(img)
    if op == "Equalize":
        return ImageOps.equalize(img)
    if op == "Grayscale":
        return ImageOps.grayscale(img).convert("RGB")
    return img


def rand_augment(
    img: Image.Image,
    rng: np.random.Generator,
    num_ops: int,
    magnitude: int,
    variant: str = "torchvision",
    bins: int = 31,
) -> Image.Image:
    """RandAugment (Cubuk et al.) with torchvision's magnitude bins and fill 0.

    ``idiff-face`` also draws each operation's magnitude bin uniformly from 1..magnitude, as IDiff-Face does.
    """
    ops = _rand_augment_ops(img.size, bins, variant)
    names = list(ops)
    for _ in range(num_ops):
        op = names[int(rng.integers(len(names)))]
        table = ops[op]
        level = int(rng.integers(1, magnitude + 1)) if variant == "idiff-face" else magnitude
        mag = float(table[level]) if table is not None else 0.0
        if op in _SIGNED and rng.random() < 0.5:
            mag = -mag
        img = _apply_op(img, op, mag)
    return img


def random_erasing(x: torch.Tensor, rng: np.random.Generator, p: float = 0.5) -> torch.Tensor:
    """torchvision RandomErasing defaults: with prob p, zero a box of 2-33% area, aspect 0.3-3.3."""
    if rng.random() >= p:
        return x
    _, h, w = x.shape
    area = h * w
    log_ratio = (math.log(0.3), math.log(3.3))
    for _ in range(10):
        erase_area = area * rng.uniform(0.02, 0.33)
        ratio = math.exp(rng.uniform(*log_ratio))
        eh, ew = int(round(math.sqrt(erase_area * ratio))), int(round(math.sqrt(erase_area / ratio)))
        if eh < h and ew < w:
            i, j = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            x = x.clone()
            x[:, i : i + eh, j : j + ew] = 0
            return x
    return x


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB uint8 image -> [3, H, W] float in [-1, 1], i.e. (x - 127.5) / 127.5 as arcface_torch trains."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(((arr - 127.5) / 127.5).transpose(2, 0, 1).copy())


class FaceDataset(torch.utils.data.Dataset):
    """Decoded, augmented [3, 112, 112] tensors and labels; items are (epoch, position, row) triples."""

    def __init__(
        self,
        reader: FaceReader,
        seed: int = 0,
        flip: bool = True,
        random_erasing: float = 0.0,
        rand_augment: tuple[int, int] | None = None,
        rand_augment_variant: str = "torchvision",
        size: int = 112,
    ) -> None:
        self.variant = rand_augment_variant
        self._reopen, self._pid = reopen(reader), os.getpid()
        self.reader, self.seed, self.flip, self.erasing, self.randaug, self.size = (
            reader,
            seed,
            flip,
            random_erasing,
            rand_augment,
            size,
        )

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        epoch, position, row = item
        if self._reopen is not None and os.getpid() != self._pid:
            self.reader, self._pid = self._reopen(), os.getpid()
        rng = np.random.default_rng([self.seed, epoch, position, 0xA06])
        try:
            img = Image.open(io.BytesIO(self.reader.read(row))).convert("RGB")
        except Exception as exc:  # PIL raises many types for bad bytes
            raise UserInputError(f"row {row}: image cannot be decoded ({exc.__class__.__name__})") from None
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BILINEAR)
        if self.flip and rng.random() < 0.5:
            img = ImageOps.mirror(img)
        if self.randaug is not None:
            img = rand_augment(img, rng, *self.randaug, variant=self.variant)
        x = to_tensor(img)
        if self.erasing > 0:
            x = random_erasing(x, rng, self.erasing)
        return x, int(self.reader.labels[row])
