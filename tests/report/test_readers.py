"""The shared readers: one view of a dataset whatever its format, and the LMDB export read as the harness reads it."""

from __future__ import annotations

import io
from pathlib import Path

import lmdb
import msgpack
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facesynth import layout
from facesynth.cli import main
from facesynth.errors import UserInputError
from facesynth.readers import open_dataset


def _content(path: Path) -> tuple[str, list[tuple[int, bytes]]]:
    dataset = open_dataset(path)
    try:
        assert dataset.labels.dtype == np.int64 and len(dataset.labels) == len(dataset)
        pairs = sorted(
            (int(dataset.identity_names[k]), dataset.read(i)) for i, k in enumerate(dataset.labels)
        )
        by_identity = [(name, len(idx)) for name, idx in dataset.identities()]
        assert sum(n for _, n in by_identity) == len(dataset)
        return dataset.format, pairs
    finally:
        dataset.close()


@pytest.mark.slow
def test_every_format_reads_the_same_images_and_labels(smoke: Path, smoke_formats: dict[str, Path]) -> None:
    rows = [r for p in sorted((smoke / layout.DATA).glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    expected = sorted((r["label"], r["image"]["bytes"]) for r in rows)
    for kind, path in smoke_formats.items():
        found, pairs = _content(path)
        assert found == kind and pairs == expected, kind


def test_lmdb_export_reads_as_the_harness_reads_it(smoke: Path, smoke_formats: dict[str, Path]) -> None:
    """Opened the way Vec2Face's harness opens it (subdir=isdir, msgpack keys, values (bytes, label))."""
    path = smoke_formats["lmdb"]
    env = lmdb.open(
        str(path), subdir=path.is_dir(), readonly=True, lock=False, readahead=False, meminit=False
    )
    with env.begin(write=False) as txn:
        length = msgpack.loads(txn.get(b"__len__"))
        keys = msgpack.loads(txn.get(b"__keys__"))
        classnum = msgpack.loads(txn.get(b"__classnum__"))
        image, label = msgpack.loads(txn.get(keys[5]))
    stats = layout.read_json(smoke / layout.STATS)
    assert length == len(keys) == stats["images_kept"] and classnum == stats["identities_kept"]
    assert keys[:3] == [b"0", b"1", b"2"]
    assert Image.open(io.BytesIO(image)).convert("RGB").size == (64, 64) and 0 <= label < classnum
    env.close()
    assert main(["export", str(smoke), str(path.parent / "again.lmdb"), "--to", "lmdb", "--no-progress"]) == 0


def test_hugging_face_parquet_and_single_lmdb_file(tmp_path: Path, smoke_formats: dict[str, Path]) -> None:
    import pyarrow as pa

    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(jpeg, format="JPEG")
    table = pa.table({"image": [{"bytes": jpeg.getvalue(), "path": None}] * 3, "label": ["b", "a", "b"]})
    (tmp_path / "hf" / "default").mkdir(parents=True)
    pq.write_table(table, tmp_path / "hf" / "default" / "train-00000-of-00001.parquet")
    dataset = open_dataset(tmp_path / "hf")
    assert dataset.identity_names == ["a", "b"] and dataset.labels.tolist() == [1, 0, 1]
    assert dataset.name(2) == "train-00000-of-00001-000002" and dataset.read(0) == jpeg.getvalue()
    # the harness's own writer makes a single file NAME.lmdb (subdir=False)
    single = tmp_path / "one.lmdb"
    env = lmdb.open(str(single), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        for k, label in enumerate([7, 3, 7]):
            txn.put(str(k).encode(), msgpack.dumps((jpeg.getvalue(), label)))
        txn.put(b"__keys__", msgpack.dumps([b"0", b"1", b"2"]))
        txn.put(b"__len__", msgpack.dumps(3))
        txn.put(b"__classnum__", msgpack.dumps(8))
    env.close()
    dataset = open_dataset(single)
    assert dataset.format == "lmdb" and dataset.identity_names == ["3", "7"]
    assert dataset.labels.tolist() == [1, 0, 1] and dataset.read(1) == jpeg.getvalue()


def test_unreadable_inputs_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "x.lmdb").write_bytes(b"not an lmdb")
    with pytest.raises(UserInputError, match="cannot open LMDB"):
        open_dataset(tmp_path / "x.lmdb")
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "train.rec").write_bytes(b"junk")
    with pytest.raises(UserInputError, match="train.idx"):
        open_dataset(tmp_path / "rec")
    (tmp_path / "rec" / "train.idx").write_text("0\t0\n")
    with pytest.raises(UserInputError, match="corrupt"):
        open_dataset(tmp_path / "rec")
