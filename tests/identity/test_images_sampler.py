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
