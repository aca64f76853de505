"""The HSFace10K recipe: validates as shipped, and a small version runs end to end on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

import facesynth
from facesynth.errors import RecipeError
from facesynth.generators.vec2face import ATTROP_COLUMNS, build_random_estimators, build_random_vec2face
from facesynth.recipe import load_recipe, parse_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "vec2face-hsface10k.yaml"


def test_hsface_recipe_validates_as_published():
    recipe = load_recipe(RECIPE)
    assert recipe.generator.name == "vec2face"
    assert recipe.identities.count == 10000 and recipe.identities.max_cosine == 0.4
    assert recipe.identities.sampler.options["normalize"] is False
    assert recipe.generator.options["attrop"]["apply_to"] == "identities"
    assert recipe.variations.vary.options == {"sigmas": [0.3, 0.5, 0.7], "weights": [0.4, 0.4, 0.2]}
    assert recipe.variations.images_per_identity == 50


@pytest.mark.parametrize(
    "sampler", ["sphere", {"name": "gaussian", "reference": "x.npy"}, {"name": "images", "root": "faces/"}]
)
def test_unit_vectors_for_a_raw_scale_generator_are_refused(sampler):
    data = yaml.safe_load(RECIPE.read_text())
    data["identities"]["sampler"] = sampler
    with pytest.raises(RecipeError, match="takes raw, un-normalised features"):
        parse_recipe(yaml.safe_dump(data))


def test_a_bank_of_unit_vectors_is_refused_at_run_time(tmp_path: Path):
    from facesynth.errors import UserInputError
    from facesynth.generators import load_generator
    from facesynth.runner import check_input_scale

    build_random_vec2face(tmp_path)
    generator = load_generator("vec2face", model=str(tmp_path), device="cpu")
    raw = np.random.default_rng(0).normal(0, 1.1, (4, 512)).astype(np.float32)
    check_input_scale(generator, raw, tmp_path / "bank.safetensors")
    with pytest.raises(UserInputError, match="bank.safetensors: the identity bank holds unit vectors"):
        check_input_scale(
            generator, raw / np.linalg.norm(raw, axis=1, keepdims=True), tmp_path / "bank.safetensors"
        )


@pytest.mark.slow
def test_small_hsface_run_end_to_end(tmp_path: Path):
    """4 identities x 3 images: PCA-Gaussian raw bank, gallery guard, centre AttrOP, sigma mixture."""
    model = tmp_path / "vec2face"
    build_random_vec2face(model)
    build_random_estimators(model)
    rng = np.random.default_rng(0)
    centres = (rng.standard_normal((64, 512)) * 1.1).astype(np.float32)  # raw, norm ~25
    np.save(tmp_path / "centres.npy", centres)
    data = yaml.safe_load(RECIPE.read_text())
    data["output"]["dir"] = str(tmp_path / "out")
    data["identities"].update(count=4, gallery=str(tmp_path / "centres.npy"))
    data["identities"]["sampler"].update(reference=str(tmp_path / "centres.npy"), components=16)
    data["generator"].update(model=str(model), batch_size=8, device="cpu")
    data["generator"]["attrop"]["max_iterations"] = 2
    data["variations"].update(images_per_identity=3, min_images_per_identity=3, max_attempts_per_identity=3)
    data["filters"] = []  # random weights: the images are not faces
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))

    stats = facesynth.run(path, progress=False)
    assert stats["images_kept"] == 12 and stats["identities_kept"] == 4
    table = pq.read_table(sorted((tmp_path / "out" / "data").glob("*.parquet"))[0]).to_pandas()
    assert set(ATTROP_COLUMNS) <= set(table.columns)
    assert set(table["attrop_iterations"]) <= {1.0, 2.0} and set(table["attrop_converged"]) <= {0.0, 1.0}
    # one record per identity: every image of an identity carries its centre's record
    assert (table.groupby("identity")["attrop_iterations"].nunique() == 1).all()
    assert (table["variation_cosine"] < 1).all()
