"""`facesynth filter` on real faces: an image folder in, a cleaned facesynth dataset out."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import face_images
import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from outputs import read_all
from PIL import Image

from facesynth import layout
from facesynth.cli import main

RECIPE = """\
name: clean
output:
  identities_per_unit: 1
filters:
  - name: face
    detector: {name: dlib, cnn_fallback: false}
  - name: identity
    embedder: dlib
writer:
  store: aligned
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two identities: the astronaut (4 augmented copies) and a folder mixing LFW faces and a blank image."""
    from skimage.data import astronaut, lfw_subset

    root = tmp_path_factory.mktemp("input")
    a = astronaut()
    copies = [
        a,
        np.ascontiguousarray(a[:, ::-1]),
        (a * 0.8).astype(np.uint8),
        cv2.GaussianBlur(a, (0, 0), 1.0),
    ]
    (root / "astronaut").mkdir()
    for i, image in enumerate(copies):
        Image.fromarray(image).save(root / "astronaut" / f"{i}.jpg")
    (root / "mixed").mkdir()
    faces = lfw_subset()[:3]
    for i, grey in enumerate(faces):
        big = cv2.resize((grey * 255).astype(np.uint8), (150, 150), interpolation=cv2.INTER_CUBIC)
        Image.fromarray(big).convert("RGB").save(root / "mixed" / f"lfw{i}.png")
    Image.new("RGB", (150, 150), (128, 128, 128)).save(root / "mixed" / "blank.png")
    (root / "mixed" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def cleaned(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(recipe, output) of `facesynth filter FOLDER --recipe clean.yaml`, run as a command. Read-only."""
    root = tmp_path_factory.mktemp("cleaned")
    recipe, out = root / "clean.yaml", root / "out"
    recipe.write_text(RECIPE)
    cmd = [sys.executable, "-m", "facesynth.cli", "filter", str(folder), "--recipe", str(recipe)]
    result = subprocess.run([*cmd, "--out", str(out), "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return recipe, out


@pytest.mark.slow
def test_filter_folder_keeps_the_consistent_identity(
    folder: Path, cleaned: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe, out = cleaned
    ds = load_dataset(str(out), split="train")
    assert all(image.size == (112, 112) for image in ds["image"])  # aligned crops
    table = [
        row for shard in sorted((out / "data").glob("*.parquet")) for row in pq.read_table(shard).to_pylist()
    ]
    assert len(table) == len(ds)
    paths = {row["image"]["path"] for row in table}
    assert {f"astronaut/{i}.jpg" for i in range(4)} <= paths
    # LFW faces of different people in one folder: not all of them pass the identity check
    assert len([p for p in paths if p.startswith("mixed/")]) < 3

    rejected = pq.read_table(out / "rejected.parquet").to_pylist()
    reasons = {r["reason"] for r in rejected}
    assert any(r.startswith("unreadable image: UnidentifiedImageError: cannot identify") for r in reasons)
    assert any(r["rejected_by"] == "face" for r in rejected)  # the blank image
    identities = {r["name"]: r for r in pq.read_table(out / "identities.parquet").to_pylist()}
    assert identities["astronaut"]["label"] == 0 and identities["astronaut"]["images_kept"] == 4

    # a rerun on the finished output changes nothing; a bad input is exit 2 (in this process: the
    # command above was the subprocess, and main's return value is the exit status)
    before = read_all(out)
    assert main(["filter", str(folder), "--recipe", str(recipe), "--out", str(out), "--no-progress"]) == 0
    assert read_all(out) == before
    capsys.readouterr()
    missing = ["filter", str(tmp_path / "nope"), "--recipe", str(recipe), "--out", str(tmp_path / "o2")]
    assert main(missing) == 2 and "not found" in capsys.readouterr().err


def test_reencoded_images_are_named_by_their_new_format(tmp_path: Path) -> None:
    """PNG inputs stored as JPEG get .jpg names, so an export writes files whose names match their bytes."""
    from facesynth.refilter import filter_dataset

    rng = np.random.default_rng(0)
    for identity in ("a", "b"):
        (tmp_path / "in" / identity).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "in" / identity / f"{i}.v1.png")
    recipe = {
        "name": "reencode",
        "output": {"image_format": "jpeg"},
        "filters": [{"name": "quality", "min_blur": None, "max_underexposed": None, "max_overexposed": None}],
        "writer": {"store": "full"},
    }
    filter_dataset(tmp_path / "in", recipe, tmp_path / "out", progress=False)
    rows = [
        row
        for shard in sorted((tmp_path / "out" / "data").glob("*.parquet"))
        for row in pq.read_table(shard).to_pylist()
    ]
    assert sorted(r["image"]["path"] for r in rows) == [
        "a/0.v1.jpg",
        "a/1.v1.jpg",
        "b/0.v1.jpg",
        "b/1.v1.jpg",
    ]
    assert all(r["image"]["bytes"][:3] == b"\xff\xd8\xff" for r in rows)  # JPEG bytes


STATEFUL = (
    """\
name: stateful
output:
  identities_per_unit: 2
"""
    + face_images.STATEFUL_FILTERS
)
FACE_ONLY = """\
name: faces-only
output:
  identities_per_unit: 1
filters:
  - name: face
    detector: {name: dlib, cnn_fallback: false}
"""


def _summary(stats: dict) -> tuple:
    return stats["images_kept"], stats["rejected_by"], stats["filter_pass_rates"], stats["recipe_hash"]


@pytest.mark.slow
def test_filter_rows_and_scores_do_not_depend_on_the_batch_size(folder: Path, tmp_path: Path) -> None:
    from facesynth.refilter import filter_dataset

    recipe = tmp_path / "stateful.yaml"
    recipe.write_text(STATEFUL)
    outputs = []
    for batch_size in (1, 3, 8):
        filter_dataset(folder, recipe, tmp_path / f"b{batch_size}", progress=False, batch_size=batch_size)
        outputs.append(read_all(tmp_path / f"b{batch_size}"))
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0]["data"] and outputs[0]["rejected"]


@pytest.mark.slow
def test_filter_overwrite_replaces_a_finished_or_unfinished_output_of_another_recipe(
    folder: Path, cleaned: tuple[Path, Path], tmp_path: Path
) -> None:
    from facesynth.errors import UserInputError
    from facesynth.refilter import filter_dataset

    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(RECIPE)
    new.write_text(FACE_ONLY)
    fresh = tmp_path / "fresh"
    expected_stats = filter_dataset(folder, new, fresh, progress=False)
    expected = read_all(fresh)

    finished = tmp_path / "finished"
    shutil.copytree(cleaned[1], finished)  # the old recipe's finished output
    old_stats = json.loads((finished / layout.STATS).read_text())
    assert _summary(old_stats) != _summary(expected_stats)
    with pytest.raises(UserInputError, match="different recipe"):
        filter_dataset(folder, new, finished, progress=False)
    assert _summary(filter_dataset(folder, new, finished, overwrite=True, progress=False)) == _summary(
        expected_stats
    )
    assert read_all(finished) == expected

    # Unfinished: every unit of the old recipe done, finalize killed before its commit.
    unfinished = tmp_path / "unfinished"
    cmd = [sys.executable, "-m", "facesynth.cli", "filter", str(folder), "--recipe", str(old)]
    env = {**os.environ, "FACESYNTH_TEST_KILL_AT": "finalize:staged"}
    killed = subprocess.run([*cmd, "--out", str(unfinished), "--no-progress"], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert list((unfinished / layout.UNITS).glob("unit-*[0-9].json")), "the old recipe's units are done"
    stats = filter_dataset(folder, new, unfinished, overwrite=True, progress=False)
    assert _summary(stats) == _summary(expected_stats)
    assert read_all(unfinished) == expected
