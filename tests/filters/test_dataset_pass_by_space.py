"""The separation filter's dataset-wide pass at finalize finds its centroids by embedding space."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

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
    cmd = [sys.executable, "-m", "facesynth.cli", "filter", str(root), "--recipe", str(tmp_path / "r.yaml")]
    result = subprocess.run([*cmd, "--out", str(out), "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    identities = {r["name"]: r for r in pq.read_table(out / "identities.parquet").to_pylist()}
    assert identities["a"]["label"] == 0 and identities["a"]["drop_reason"] is None
    assert identities["b"]["drop_reason"].startswith("collides with identity 0")
