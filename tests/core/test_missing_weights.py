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


def test_units_are_sized_from_the_generators_declared_image_size():
    from facesynth.generators import GENERATORS
    from facesynth.prepare import identities_per_unit
    from facesynth.recipe import load_recipe

    def per_unit(name: str, size: int | None) -> int:
        generator = {"name": name, **({"size": size} if size else {}), "model": "x"}
        if name == "tiny":
            generator.pop("model")
        recipe = load_recipe(
            {
                "name": "t",
                "identities": {"count": 8, "sampler": "sphere"},
                "generator": generator,
                "output": {"shard_size_mb": 64},
                "variations": {"images_per_identity": 4},
            }
        )
        return identities_per_unit(recipe)

    assert per_unit("tiny", 64) == 16 * per_unit("tiny", 256)  # 16x the pixels, 1/16 the identities
    assert GENERATORS.get("vec2face").image_size(GENERATORS.parse_options("vec2face", {"model": "x"})) == 112
    assert (
        GENERATORS.get("idiff-face").image_size(GENERATORS.parse_options("idiff-face", {"model": "x"})) == 128
    )
    assert per_unit("arc2face", None) == per_unit("tiny", 512)  # arc2face's default size
