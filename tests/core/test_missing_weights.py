"""`facesynth run` reports missing generator weights before it builds the identity bank."""

from __future__ import annotations

import os
import subprocess
import sys
import time

RECIPE = """\
name: missing-weights
seed: 1
identities:
  count: 200000             # minutes of bank building, were it built first
  sampler: sphere
  max_cosine: 0.3
generator:
  name: arc2face
  model: nobody/missing-arc2face
variations:
  images_per_identity: 2
"""


def test_missing_generator_weights_fail_before_the_bank_is_built(tmp_path):
    recipe, out = tmp_path / "recipe.yaml", tmp_path / "out"
    recipe.write_text(RECIPE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "facesynth.cli", "run", str(recipe), "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip()
    assert "\n" not in error and "Traceback" not in error
    assert "nobody/missing-arc2face" in error and "hf download nobody/missing-arc2face" in error
    assert not (out / "bank.safetensors").exists() and not (out / "run.json").exists()
    assert seconds < 120  # the process's imports only; building the bank alone takes minutes
