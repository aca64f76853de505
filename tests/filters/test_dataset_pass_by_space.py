"""The separation filter's dataset-wide pass at finalize finds its centroids by embedding space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from facesynth.cli import main

RECIPE = """\
name: two-astronauts
output:
  identities_per_unit: 1
filters:
  - name: face
    detector: {name: dlib, cnn_fallback: false}
  - name: separation
    embedder: dlib
"""


@pytest.mark.slow
def test_finalize_drops_an_identity_whose_centroid_collides_in_another_unit(
    astronaut, tmp_path: Path
) -> None:
    # Two folders of the same person, one identity per unit: only the dataset pass can see both.
    root = tmp_path / "input"
    for name, images in {
        "a": [astronaut, astronaut[:, ::-1]],
        "b": [(astronaut * 0.8).astype(np.uint8)],
    }.items():
        (root / name).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(np.ascontiguousarray(image)).save(root / name / f"{i}.png")
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "out"
    # the command in this process (its exit status is main's return value): a new interpreter costs seconds
    assert (
        main(["filter", str(root), "--recipe", str(tmp_path / "r.yaml"), "--out", str(out), "--no-progress"])
        == 0
    )
    identities = {r["name"]: r for r in pq.read_table(out / "identities.parquet").to_pylist()}
    assert identities["a"]["label"] == 0 and identities["a"]["drop_reason"] is None
    assert identities["b"]["drop_reason"].startswith("collides with identity 0")
