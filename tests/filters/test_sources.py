"""Readers for ``facesynth filter INPUT``."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facesynth.errors import UserInputError
from facesynth.filters.sources import Unreadable, iter_source


def jpeg(color: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), color, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_image_folder_with_an_unreadable_file(tmp_path) -> None:
    for identity in ("alice", "bob"):
        (tmp_path / identity).mkdir()
        (tmp_path / identity / "0.jpg").write_bytes(jpeg(100))
    (tmp_path / "bob" / "1.png").write_bytes(b"not an image")
    (tmp_path / "bob" / "notes.txt").write_text("ignored")
    found = list(iter_source(tmp_path))
    assert [name for name, _ in found] == ["alice", "bob"]
    bob = dict(found[1][1])
    assert set(bob) == {"0.jpg", "1.png"} and bob["0.jpg"].size == (8, 8)
    assert isinstance(bob["1.png"], Unreadable) and "cannot identify image file" in bob["1.png"].reason


def test_parquet_dataset_groups_rows_by_label(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    table = pa.table(
        {
            "image": [
                {"bytes": jpeg(10), "path": "a.jpg"},
                {"bytes": b"junk", "path": "b.jpg"},
                {"bytes": jpeg(20), "path": "c.jpg"},
            ],
            "label": [3, 7, 3],
        }
    )
    pq.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet")
    found = dict(iter_source(tmp_path))
    assert [n for n, _ in found["3"]] == ["a.jpg", "c.jpg"]
    assert isinstance(found["7"][0][1], Unreadable)  # the pipeline rejects it, naming the reason


def test_bad_inputs_are_user_errors(tmp_path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        list(iter_source(tmp_path / "nothing"))
    with pytest.raises(UserInputError, match="no identity subfolders"):
        list(iter_source(tmp_path))
    pq.write_table(pa.table({"pixels": [1]}), tmp_path / "x.parquet")
    with pytest.raises(UserInputError, match="image, label"):
        list(iter_source(tmp_path / "x.parquet"))
    (tmp_path / "bad.parquet").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="cannot read parquet"):
        list(iter_source(tmp_path / "bad.parquet"))
