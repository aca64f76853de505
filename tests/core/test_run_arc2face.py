"""A full `facesynth run` with the arc2face generator on local folders in the published layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset

import facesynth
from facesynth.encoding import encode_image
from facesynth.generators import load_generator
from facesynth.generators.tiny import build_tiny_checkpoints


@pytest.mark.slow
def test_run_arc2face_on_local_checkpoints(tmp_path: Path) -> None:
    model, base = build_tiny_checkpoints(tmp_path / "cache")
    recipe = {
        "name": "arc2face-local",
        "seed": 3,
        "output": {"image_format": "png", "identities_per_unit": 2},
        "identities": {"count": 4, "sampler": "sphere", "max_cosine": 0.3},
        "generator": {
            "name": "arc2face",
            "model": str(model),
            "base_model": str(base),
            "size": 64,
            "steps": 2,
        },
        "variations": {"images_per_identity": 2},
        "writer": {"store": "full"},
    }
    out = tmp_path / "out"
    stats = facesynth.run(recipe, out=out, progress=False)
    assert stats["images_kept"] == 8 and len(stats["shards"]) == 2
    assert stats["generator"]["model_path"] == str(model)
    ds = load_dataset(str(out), split="train")
    assert sorted(set(ds["label"])) == [0, 1, 2, 3]
    card = (out / "README.md").read_text()
    assert str(model) in card and json.loads((out / "stats.json").read_text())["images_kept"] == 8

    # the tiny generator is the same code on the same folders: same options, same pixels
    row = pq.read_table(out / "data" / "train-00001-of-00002.parquet").to_pylist()[0]
    regenerated = facesynth.regenerate(out, row["identity"], row["attempt"])
    assert encode_image(regenerated, "png", 95) == row["image"]["bytes"]
    tiny = load_generator("tiny", size=64, steps=2, cache_dir=str(tmp_path / "cache"))
    vector = pq.read_table(out / "identities.parquet").to_pylist()[row["identity"]]["vector"]
    assert row["variation_cosine"] == 1.0  # vary: none, so the bank vector is the conditioning vector
    (image,) = tiny.generate(np.array([vector], np.float32), [row["seed"]])
    assert encode_image(image, "png", 95) == row["image"]["bytes"]
