"""Training data: row-group reading, resumable shuffled order, per-sample deterministic augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from recog_helpers import identity_faces, make_face_dataset

from facesynth.errors import UserInputError
from facesynth.recognition.data import (
    EpochBatches,
    FaceDataset,
    ParquetReader,
    epoch_order,
    rand_augment,
    random_erasing,
)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    # Tiny row groups (~4 images each) so reads cross many groups.
    return make_face_dataset(
        tmp_path_factory.mktemp("faces"), identity_faces()[:5], 6, row_group_bytes=12_000
    )


def test_reader_reads_every_row_across_row_groups(small_dataset) -> None:
    reader = ParquetReader(small_dataset, cache_groups=1)
    assert len(reader) == 30 and len(reader.group_sizes) > 3
    assert reader.labels.tolist() == [k for k in range(5) for _ in range(6)]
    for i in [29, 0, 13, 14, 7]:  # out of order: evicts and rereads groups
        assert Image.open(__import__("io").BytesIO(reader.read(i))).size == (112, 112)


def test_reader_names_a_folder_without_shards(tmp_path) -> None:
    with pytest.raises(UserInputError, match="no parquet shards"):
        ParquetReader(tmp_path)


def test_epoch_order_is_a_seeded_permutation_that_changes_per_epoch() -> None:
    sizes = [7, 5, 9, 3, 6]
    a = epoch_order(sizes, seed=1, epoch=0, window=2)
    assert sorted(a.tolist()) == list(range(30))
    assert np.array_equal(a, epoch_order(sizes, seed=1, epoch=0, window=2))
    assert not np.array_equal(a, epoch_order(sizes, seed=1, epoch=1, window=2))


def test_batches_resume_at_a_step_and_split_across_ranks() -> None:
    sizes = [10, 10, 12]
    full = list(EpochBatches(sizes, 4, seed=0, epoch=2))
    assert len(full) == 8
    assert list(EpochBatches(sizes, 4, seed=0, epoch=2, start=3)) == full[3:]
    rank0 = list(EpochBatches(sizes, 4, seed=0, epoch=2, rank=0, world=2))
    rank1 = list(EpochBatches(sizes, 4, seed=0, epoch=2, rank=1, world=2))
    assert len(rank0) == len(rank1) == 4
    assert [b for pair in zip(rank0, rank1, strict=True) for b in pair] == full  # global batch = both ranks
    rows = [[row for batch in batches for _, _, row in batch] for batches in (rank0, rank1)]
    assert sorted(rows[0] + rows[1]) == list(range(32))  # disjoint, and together every row of the epoch


def test_augmentation_depends_only_on_seed_epoch_and_position(small_dataset) -> None:
    reader = ParquetReader(small_dataset)
    ds = FaceDataset(reader, seed=3, flip=True, random_erasing=0.5, rand_augment=(2, 9))
    first, label = ds[(1, 17, 8)]
    ds[(0, 2, 3)]  # another item in between changes nothing
    again, _ = ds[(1, 17, 8)]
    assert label == 1 and first.shape == (3, 112, 112) and torch.equal(first, again)
    assert first.min() >= -1 and first.max() <= 1
    views = {ds[(1, p, 8)][0].sum().item() for p in range(6)}
    assert len(views) > 1  # different positions draw different augmentations


def test_random_erasing_zeroes_one_box() -> None:
    x = torch.ones(3, 112, 112)
    erased = next(random_erasing(x, np.random.default_rng(s), p=1.0) for s in range(5))  # p=1: always erases
    zero = erased[0] == 0
    assert 0.02 * 112 * 112 * 0.9 <= zero.sum() <= 0.33 * 112 * 112 * 1.1
    rows, cols = zero.any(1).nonzero(), zero.any(0).nonzero()
    assert zero.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # a rectangle


def test_rand_augment_changes_the_image_and_is_seeded() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8))
    a = np.asarray(rand_augment(img, np.random.default_rng(1), 4, 16))
    b = np.asarray(rand_augment(img, np.random.default_rng(1), 4, 16))
    assert np.array_equal(a, b) and not np.array_equal(a, np.asarray(img))


def test_idiff_face_rand_augment_variant_uses_its_operation_set() -> None:
    from facesynth.recognition.data import _rand_augment_ops

    ops = _rand_augment_ops((112, 112), 31, "idiff-face")
    assert "Grayscale" in ops and "ShearY" not in ops and "TranslateY" not in ops
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8))
    out = rand_augment(img, np.random.default_rng(2), 4, 16, variant="idiff-face")
    assert out.size == (112, 112) and out.mode == "RGB"


def test_image_folders_feed_workers_through_the_shared_readers(small_dataset, tmp_path) -> None:
    """Other formats come through facesynth.readers; each DataLoader worker opens its own reader."""
    from facesynth.recognition.data import open_reader, row_groups

    parquet = ParquetReader(small_dataset)
    for i in range(len(parquet)):
        folder = tmp_path / "folder" / f"id{parquet.labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.jpg").write_bytes(parquet.read(i))
    reader = open_reader(tmp_path / "folder")
    assert reader.labels.tolist() == parquet.labels.tolist() and row_groups(reader) == [30]
    ds = FaceDataset(reader, seed=0)
    batches = EpochBatches(row_groups(reader), 5, seed=0, epoch=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=2)
    labels = torch.cat([y for _, y in loader])
    assert sorted(labels.tolist()) == sorted(parquet.labels.tolist())
