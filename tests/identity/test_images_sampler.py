"""The images sampler with the real dlib embedder on a real face and augmented copies of it."""

from __future__ import annotations

import numpy as np
import pytest

from facesynth.identity import SAMPLERS


@pytest.mark.slow
def test_astronaut_copies_form_one_consistent_identity(astronaut_folder):
    sampler = SAMPLERS.create("images", root=str(astronaut_folder), embedder="dlib")
    assert sampler.dim == 128 and sampler.names == ["astronaut"]
    vectors = sampler.draw(5, np.random.default_rng(0))
    assert vectors.shape == (1, 128)
    assert abs(np.linalg.norm(vectors[0]) - 1) < 1e-5
    # dlib calls two faces the same person below euclidean distance 0.6 (cosine above 0.82):
    # every augmented copy must agree with the identity vector far more than that.
    assert sampler.agreement[0] > 0.93
    assert len(sampler.draw(5, np.random.default_rng(0))) == 0  # one folder, one identity: exhausted


@pytest.mark.slow
def test_bank_names_are_those_of_the_folders_kept(tmp_path):
    """A folder rejected as too close to an earlier one must not shift the names of the later ones."""
    import skimage.data
    from PIL import Image

    from facesynth.identity.bank import BankOptions, build_bank

    astronaut = Image.fromarray(skimage.data.astronaut())
    faces = {
        "a_astronaut": astronaut,
        "b_astronaut_again": astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT),  # same person: rejected
        "c_cameraman": Image.fromarray(skimage.data.camera()).convert("RGB"),
    }
    for name, image in faces.items():
        (tmp_path / name).mkdir()
        image.save(tmp_path / name / "face.png")
    sampler = {"name": "images", "root": str(tmp_path), "embedder": "dlib"}
    options = BankOptions.model_validate({"count": 2, "sampler": sampler, "max_cosine": 0.9})
    bank = build_bank(options, seed=0, progress=False)
    assert bank.provenance["identity_names"] == ["a_astronaut", "c_cameraman"]
