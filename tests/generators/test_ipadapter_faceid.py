from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facesynth.errors import FacesynthError, UserInputError
from facesynth.generators import load_generator
from facesynth.generators.ipadapter_faceid import DEFAULT_PROMPT
from facesynth.generators.tiny import build_tiny_ipadapter


def as_arrays(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


PROMPTS = ["a photo of a person, smiling", "portrait, face, profile"] * 4


def test_weight_file_has_the_h94_layout(ipadapter_dir):
    state = torch.load(ipadapter_dir / "ip-adapter-faceid_sd15.bin", weights_only=True)
    assert set(state) == {"image_proj", "ip_adapter"}
    assert {"proj.0.weight", "proj.2.weight", "norm.weight"} <= set(state["image_proj"])
    assert state["image_proj"]["proj.0.weight"].shape[1] == 512
    assert "1.to_k_ip.weight" in state["ip_adapter"] and "1.to_v_ip.weight" in state["ip_adapter"]


def test_mixed_identities_and_prompts_are_batch_invariant(ipadapter, vectors):
    seeds = list(range(20, 28))
    batch = as_arrays(ipadapter.generate(vectors, seeds, PROMPTS))
    for i in (0, 3, 6):
        alone = np.asarray(ipadapter.generate(vectors[i : i + 1], [seeds[i]], [PROMPTS[i]])[0])
        assert np.array_equal(alone, batch[i]), (
            f"image {i}: max diff {np.abs(alone.astype(int) - batch[i]).max()}"
        )


def test_identity_and_prompt_both_steer_the_image(ipadapter, vectors):
    base, other_id, other_prompt, again = as_arrays(
        ipadapter.generate(
            vectors[[0, 1, 0, 0]], [3, 3, 3, 3], [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[0]]
        )
    )
    assert np.array_equal(base, again)
    assert np.abs(base.astype(int) - other_id).mean() > 1
    assert np.abs(base.astype(int) - other_prompt).mean() > 1


def test_default_prompt_is_used_when_none_given(ipadapter, vectors):
    implicit = ipadapter.generate(vectors[:2], [1, 2])
    explicit = ipadapter.generate(vectors[:2], [1, 2], [DEFAULT_PROMPT, DEFAULT_PROMPT])
    assert all(np.array_equal(a, b) for a, b in zip(as_arrays(implicit), as_arrays(explicit), strict=True))
    info = json.loads(json.dumps(ipadapter.describe()))
    assert info["prompt"] == DEFAULT_PROMPT and info["adapter_path"].endswith("ip-adapter-faceid_sd15.bin")
    assert ipadapter.uses_prompts is True


def test_input_errors(ipadapter, vectors):
    with pytest.raises(UserInputError, match="dimension 512"):
        ipadapter.generate(vectors[:, :256], [0] * 8)
    with pytest.raises(UserInputError, match="2 vectors but 1 prompts"):
        ipadapter.generate(vectors[:2], [0, 1], ["one prompt"])


def test_faceid_lora_without_peft_is_an_error_not_a_silent_downgrade(tiny_dirs, tmp_path):
    from diffusers.utils import USE_PEFT_BACKEND

    if USE_PEFT_BACKEND:
        pytest.skip("peft is installed")
    build_tiny_ipadapter(tiny_dirs[1], tmp_path, loras=True)
    with pytest.raises(FacesynthError, match="pip install peft"):
        load_generator("ipadapter-faceid", base_model=str(tiny_dirs[1]), adapter=str(tmp_path), size=64)


def test_missing_adapter_file_is_named(tiny_dirs, tmp_path):
    from facesynth.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match=r"ip-adapter-faceid_sd15\.bin is missing"):
        load_generator("ipadapter-faceid", base_model=str(tiny_dirs[1]), adapter=str(tmp_path))
