from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facesynth.errors import UserInputError
from facesynth.generators import load_generator
from facesynth.generators.ipadapter_faceid import DEFAULT_PROMPT


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


LORA_PARTS = ("to_q", "to_k", "to_v", "to_out")


def test_faceid_lora_file_has_the_published_keys(faceid_lora_dir, ipadapter_dir, ipadapter):
    """As in ip-adapter-faceid_sd15.bin: a LoRA per attention processor, keyed by processor index."""
    state = torch.load(faceid_lora_dir / "ip-adapter-faceid_sd15.bin", weights_only=True)
    plain = torch.load(ipadapter_dir / "ip-adapter-faceid_sd15.bin", weights_only=True)
    processors = list(ipadapter.pipe.unet.attn_processors)
    lora_keys = {k for k in state["ip_adapter"] if "_lora." in k}
    assert len(lora_keys) == 8 * len(processors)
    for index, name in enumerate(processors):
        attn = ipadapter.pipe.unet.get_submodule(name.rsplit(".", 1)[0])
        width = attn.to_q.in_features
        fan_ins = (width, attn.to_k.in_features, attn.to_v.in_features, width)
        for part, fan_in in zip(LORA_PARTS, fan_ins, strict=True):
            down = state["ip_adapter"][f"{index}.{part}_lora.down.weight"]
            up = state["ip_adapter"][f"{index}.{part}_lora.up.weight"]
            assert down.shape == (4, fan_in) and up.shape == (width, 4) and up.abs().sum() > 0
        assert (f"{index}.to_k_ip.weight" in state["ip_adapter"]) == name.endswith("attn2.processor")
    # the LoRA is an addition: everything else is the file without it
    for part in ("image_proj", "ip_adapter"):
        rest = {k: v for k, v in state[part].items() if k not in lora_keys}
        assert rest.keys() == plain[part].keys()
        assert all(torch.equal(v, plain[part][k]) for k, v in rest.items())


@pytest.mark.slow
def test_faceid_lora_is_applied_and_batch_invariant(tiny_dirs, faceid_lora_dir, ipadapter, vectors, tmp_path):
    from peft.tuners.tuners_utils import BaseTunerLayer

    def load(folder):
        return load_generator(
            "ipadapter-faceid",
            base_model=str(tiny_dirs[1]),
            adapter=str(folder),
            size=64,
            steps=3,
            batch_size=4,
        )

    with_lora = load(faceid_lora_dir)
    unet = with_lora.pipe.unet
    assert list(unet.peft_config) == ["faceid_0"] and with_lora.pipe.get_active_adapters() == ["faceid_0"]
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    assert len(layers) == len(LORA_PARTS) * len(unet.attn_processors)

    seeds = [41, 42, 43, 44]
    batch = as_arrays(with_lora.generate(vectors[:4], seeds, PROMPTS[:4]))
    for i in (1, 3):
        alone = np.asarray(with_lora.generate(vectors[i : i + 1], [seeds[i]], [PROMPTS[i]])[0])
        assert np.array_equal(alone, batch[i])
    # The same file with the LoRA's up weights zeroed gives exactly the images of the file without a
    # LoRA, and those differ from the LoRA's: the difference is the LoRA.
    state = torch.load(faceid_lora_dir / "ip-adapter-faceid_sd15.bin", weights_only=True)
    for key, value in state["ip_adapter"].items():
        if "_lora.up." in key:
            value.zero_()
    torch.save(state, tmp_path / "ip-adapter-faceid_sd15.bin")
    zeroed = as_arrays(load(tmp_path).generate(vectors[:4], seeds, PROMPTS[:4]))
    without = as_arrays(ipadapter.generate(vectors[:4], seeds, PROMPTS[:4]))
    assert all(np.array_equal(a, b) for a, b in zip(zeroed, without, strict=True))
    assert all(np.abs(a.astype(int) - b).mean() > 1 for a, b in zip(batch, without, strict=True))


def test_missing_adapter_file_is_named(tiny_dirs, tmp_path):
    from facesynth.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match=r"ip-adapter-faceid_sd15\.bin is missing"):
        load_generator("ipadapter-faceid", base_model=str(tiny_dirs[1]), adapter=str(tmp_path))


def test_generator_space_is_insightface_buffalo_l(ipadapter):
    # The ArcFace IP-Adapter FaceID was trained with: buffalo_l's w600k_r50.onnx, by its SHA-256.
    assert ipadapter.embedding_space == (
        "arcface-onnx:4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43"
    )
