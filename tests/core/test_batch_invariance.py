"""Filter decisions and scores do not depend on the generator's batch size, nor on resuming with another.

`face-images` (tests/face_images.py) returns real LFW photographs chosen from (vector, seed), so the
whole face filter stack runs: face (dlib), identity (dlib), duplicates and separation, all stateful
or group-dependent before the pipeline regrouped candidates per identity and round.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import face_images
import pytest
from outputs import read_all
from test_run import _start_and_stop_after

import facesynth
from facesynth import layout

TESTS = Path(__file__).resolve().parents[1]
RECIPE = (
    """\
name: faces
seed: 0
output:
  identities_per_unit: 3
  image_format: png
identities:
  count: 6
  sampler: sphere
  max_cosine: 0.3
generator:
  name: face-images
  size: 128
  batch_size: 4
variations:
  images_per_identity: 3
  min_images_per_identity: 1
  max_attempts_per_identity: 5
writer:
  store: aligned
"""
    + face_images.STATEFUL_FILTERS
)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    face_images.register()
    path = tmp_path_factory.mktemp("recipe") / "faces.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def reference(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("faces") / "b8"
    facesynth.run(recipe, out=out, overrides=["generator.batch_size=8"], progress=False)
    return read_all(out)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3])
def test_rows_and_scores_do_not_depend_on_the_batch_size(
    recipe: Path, reference: dict, batch_size: int, tmp_path: Path
) -> None:
    facesynth.run(recipe, out=tmp_path, overrides=[f"generator.batch_size={batch_size}"], progress=False)
    assert read_all(tmp_path) == reference
    # every filter of the stack decided something, so the comparison covers each one
    assert {"face", "identity", "duplicates", "separation"} <= {
        r["rejected_by"] for r in reference["rejected"]
    }
    assert any(isinstance(r["identity_cosine"], float) for shard in reference["data"] for r in shard)


@pytest.mark.slow
def test_resume_after_sigkill_with_another_batch_size(recipe: Path, reference: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"

    run = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import face_images; face_images.register(); "
        "from facesynth.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    command = [sys.executable, "-c", run, "run", str(recipe), "--out", str(out), "--no-progress"]
    killed = _start_and_stop_after([*command, "--set", "generator.batch_size=1"], out, 1, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert len(list((out / layout.UNITS).glob("unit-*[0-9].json"))) < 2, "killed before the last unit"
    # The rerun in this process (face-images is registered here too): only the killed run needs its own.
    facesynth.run(recipe, out=out, overrides=["generator.batch_size=3"], progress=False)
    assert read_all(out) == reference
