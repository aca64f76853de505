from __future__ import annotations

import copy
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from facesynth.errors import FacesynthError, ModelNotFoundError, UserInputError
from facesynth.generators import load_generator
from facesynth.generators.arc2face import ID_PROMPT, arc2face_space


def as_arrays(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


def test_conditioning_equals_text_encoder_with_id_token_embedding_replaced(arc2face, vectors):
    """Independent computation: put the padded vector into the `id` row of the embedding table."""
    pipe = arc2face.pipe
    ids = pipe.tokenizer(ID_PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    id_token = pipe.tokenizer.convert_tokens_to_ids("id</w>")
    assert (ids == id_token).sum() == 1 and arc2face.id_token_id == id_token
    with torch.inference_mode():
        ours = arc2face.prompt_embeds(vectors[:3])
    width = pipe.text_encoder.config.hidden_size
    assert ours.shape == (3, 77, width) and width > 512  # the zero padding is exercised
    for i in range(3):
        unit = torch.from_numpy(vectors[i]) / np.linalg.norm(vectors[i])
        encoder = copy.deepcopy(pipe.text_encoder)
        with torch.no_grad():
            encoder.get_input_embeddings().weight[id_token] = F.pad(unit, (0, width - 512))
            expected = encoder(ids).last_hidden_state[0]
        torch.testing.assert_close(ours[i], expected, rtol=0, atol=1e-5)
    # the vector is L2-normalised first: scaling it changes nothing
    with torch.inference_mode():
        torch.testing.assert_close(arc2face.prompt_embeds(vectors[:1] * 5.0), ours[:1], rtol=0, atol=1e-5)


def test_negative_is_the_empty_prompt_encoding(arc2face):
    with torch.inference_mode():
        expected = arc2face.pipe.encode_prompt(
            [""], torch.device("cpu"), 1, do_classifier_free_guidance=False
        )[0]
    torch.testing.assert_close(arc2face.negative_embeds, expected, rtol=0, atol=0)


def test_image_alone_equals_image_in_a_batch_of_8(arc2face, vectors):
    seeds = [11, 12, 13, 14, 15, 16, 17, 18]
    batch = as_arrays(arc2face.generate(vectors, seeds))
    assert arc2face.batch_invariant  # on by default on CPU
    for i in (0, 5, 7):
        alone = np.asarray(arc2face.generate(vectors[i : i + 1], [seeds[i]])[0])
        assert np.array_equal(alone, batch[i]), (
            f"image {i}: max diff {np.abs(alone.astype(int) - batch[i]).max()}"
        )
    # a different batch composition (other neighbours, other position) changes nothing either
    mixed = as_arrays(arc2face.generate(vectors[[7, 2, 0]], [seeds[7], 99, seeds[0]]))
    assert np.array_equal(mixed[0], batch[7]) and np.array_equal(mixed[2], batch[0])


def test_same_seed_same_image_other_vector_or_seed_other_image(arc2face, vectors):
    a, b, c, d = as_arrays(arc2face.generate(vectors[[0, 0, 1, 0]], [5, 5, 5, 6]))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    # other identity: the tiny random UNet listens to its text encoder only weakly, but it does
    assert np.abs(a.astype(int) - c).mean() > 0.2
    assert np.abs(a.astype(int) - d).mean() > 1  # other seed


def test_stochastic_scheduler_is_still_per_image(tiny_dirs, vectors):
    model, base = tiny_dirs
    gen = load_generator(
        "arc2face", model=str(model), base_model=str(base), size=64, steps=3, scheduler="lcm", guidance=1.0
    )
    batch = as_arrays(gen.generate(vectors[:4], [1, 2, 3, 4]))
    assert np.array_equal(np.asarray(gen.generate(vectors[2:3], [3])[0]), batch[2])
    assert gen.describe()["scheduler"] == "lcm"


def test_describe_is_json_and_records_the_setup(arc2face, tiny_dirs):
    info = json.loads(json.dumps(arc2face.describe()))
    assert info["model_path"] == str(tiny_dirs[0].resolve())
    assert (info["scheduler"], info["steps"], info["guidance"], info["size"], info["dtype"]) == (
        "dpm++",
        3,
        3.0,
        64,
        "fp32",
    )
    assert arc2face.name == "arc2face" and arc2face.dim == 512 and arc2face.uses_prompts is False


def test_wrong_vector_dimension_names_expected_and_got(arc2face):
    with pytest.raises(UserInputError, match=r"dimension 512.*got 128-d"):
        arc2face.generate(np.ones((2, 128), np.float32), [0, 1])
    with pytest.raises(UserInputError, match="2 vectors but 1 seeds"):
        arc2face.generate(np.ones((2, 512), np.float32), [0])


def test_missing_weights_offline_names_repo_and_hf_download(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError) as info:
        load_generator("arc2face", model="facesynth-tests/no-such-arc2face")
    message = str(info.value)
    assert "\n" not in message
    assert "facesynth-tests/no-such-arc2face" in message and "HF_HUB_OFFLINE" in message
    assert "`hf download facesynth-tests/no-such-arc2face --include 'arc2face/*' 'encoder/*'`" in message
    assert "generator.model" in message and "local folder" in message


def test_folder_with_wrong_layout_names_the_missing_file(tiny_dirs, tmp_path):
    model, base = tiny_dirs
    broken = tmp_path / "arc2face"
    shutil.copytree(model, broken)
    (broken / "encoder" / "pytorch_model.bin").unlink()
    with pytest.raises(ModelNotFoundError, match=r"encoder/pytorch_model\.bin is missing"):
        load_generator("arc2face", model=str(broken), base_model=str(base))
    broken_base = tmp_path / "base"
    shutil.copytree(base, broken_base)
    (broken_base / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(ModelNotFoundError, match=r"generator.base_model.*tokenizer/merges\.txt is missing"):
        load_generator("arc2face", model=str(model), base_model=str(broken_base))
    with pytest.raises(UserInputError, match="does not exist"):
        load_generator("arc2face", model=str(tmp_path / "nowhere" / "arc2face"), base_model=str(base))


def test_cuda_out_of_memory_advises_lower_batch_size(tiny_dirs, vectors):
    model, base = tiny_dirs
    gen = load_generator("arc2face", model=str(model), base_model=str(base), size=64, steps=1, batch_size=4)

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    gen.pipe.unet.register_forward_pre_hook(out_of_memory)
    with pytest.raises(FacesynthError, match=r"out of memory.*lower generator\.batch_size \(now 4\)") as info:
        gen.generate(vectors[:4], [0, 1, 2, 3])
    assert "\n" not in str(info.value) and not isinstance(info.value, UserInputError)


def test_options_are_validated():
    with pytest.raises(UserInputError, match="steps"):
        load_generator("arc2face", steps=0)
    with pytest.raises(UserInputError, match="multiple of 8"):
        load_generator("arc2face", size=100)
    with pytest.raises(UserInputError, match="schedular"):
        load_generator("arc2face", schedular="ddim")


def test_lcm_lora_file_has_the_published_layout(lcm_lora_dir):
    """Kohya-style keys, as diffusers' LCM-LoRA distillation script saves them."""
    state = load_file(lcm_lora_dir / "pytorch_lora_weights.safetensors")
    modules = {key.split(".")[0] for key in state}
    assert all(name.startswith("lora_unet_") for name in modules)
    assert {key.split(".", 1)[1] for key in state} == {"lora_down.weight", "lora_up.weight", "alpha"}
    attn = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert state[f"{attn}.lora_down.weight"].shape == (4, 32) and state[f"{attn}.alpha"].ndim == 0
    assert state[f"{conv}.lora_down.weight"].shape == (4, 32, 3, 3)
    assert state[f"{conv}.lora_up.weight"].shape == (32, 4, 1, 1)
    assert "lora_unet_down_blocks_0_resnets_0_time_emb_proj.alpha" in state
    assert "lora_unet_up_blocks_0_upsamplers_0_conv.lora_up.weight" in state


@pytest.mark.slow
def test_lcm_lora_fast_mode_applies_every_layer_is_batch_invariant_and_changes_images(
    tiny_dirs, lcm_lora_dir, vectors
):
    from diffusers import LCMScheduler
    from peft.tuners.tuners_utils import BaseTunerLayer

    model, base = tiny_dirs
    common = {"model": str(model), "base_model": str(base), "size": 64, "batch_size": 4}
    fast = load_generator("arc2face", lcm_lora=str(lcm_lora_dir), **common)
    info = fast.describe()
    assert (info["scheduler"], info["steps"], info["guidance"]) == ("lcm", 4, 1.0)
    assert isinstance(fast.pipe.scheduler, LCMScheduler) and info["lcm_lora"] == str(lcm_lora_dir.resolve())
    # every LoRA of the file became a (fused) peft layer of the UNet: none was dropped by key conversion
    modules = {key.split(".")[0] for key in load_file(lcm_lora_dir / "pytorch_lora_weights.safetensors")}
    layers = [m for m in fast.pipe.unet.modules() if isinstance(m, BaseTunerLayer)]
    assert len(layers) == len(modules) and all(layer.merged for layer in layers)

    seeds = [31, 32, 33, 34]
    batch = as_arrays(fast.generate(vectors[:4], seeds))
    for i in (0, 3):
        assert np.array_equal(np.asarray(fast.generate(vectors[i : i + 1], [seeds[i]])[0]), batch[i])
    plain = load_generator("arc2face", scheduler="lcm", steps=4, guidance=1.0, **common)
    without = as_arrays(plain.generate(vectors[:4], seeds))
    assert all(np.abs(a.astype(int) - b).mean() > 1 for a, b in zip(batch, without, strict=True))


def test_real_hub_layout_is_requested(monkeypatch):
    """The Hub download asks for exactly the published folders, and only those we load."""
    from facesynth.generators import checkpoints

    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        raise OSError("offline")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(ModelNotFoundError, match="--revision abc123"):
        checkpoints.resolve_checkpoint(
            "FoivosPar/Arc2Face", "abc123", checkpoints.ARC2FACE_LAYOUT, "generator.model"
        )
    assert calls == [("FoivosPar/Arc2Face", "abc123", ("arc2face/*", "encoder/*"))]


def test_base_folder_saved_by_transformers_5_is_accepted(tiny_dirs, arc2face, vectors, tmp_path):
    """transformers 5 saves a tokenizer as tokenizer.json alone (no vocab.json/merges.txt); it loads."""
    from transformers import CLIPTokenizer

    model, base = tiny_dirs
    resaved = tmp_path / "base"
    shutil.copytree(base, resaved)
    shutil.rmtree(resaved / "tokenizer")
    CLIPTokenizer.from_pretrained(base / "tokenizer").save_pretrained(resaved / "tokenizer")
    gen = load_generator(
        "arc2face", model=str(model), base_model=str(resaved), size=64, steps=3, batch_size=8
    )
    expected = arc2face.generate(vectors[:2], [1, 2])
    got = gen.generate(vectors[:2], [1, 2])
    assert [np.asarray(i).tobytes() for i in got] == [np.asarray(i).tobytes() for i in expected]


def test_generator_space_is_that_of_the_arcface_onnx_it_ships(arc2face, tiny_dirs, tmp_path, caplog):
    # The tiny folder ships no arcface.onnx: no generator space, and a warning naming the fix.
    assert arc2face.embedding_space is None
    with caplog.at_level("WARNING"):
        assert arc2face_space(tiny_dirs[0]) is None
    assert "hf download FoivosPar/Arc2Face arcface.onnx" in caplog.text
    # With the file beside the UNet: the space of an arcface-onnx embedder loading that very file.
    model = tmp_path / "arc2face"
    shutil.copytree(tiny_dirs[0], model)
    (model / "arcface.onnx").write_bytes(b"stands in for Arc2Face's ArcFace R100")
    gen = load_generator("arc2face", model=str(model), base_model=str(tiny_dirs[1]), size=64, steps=1)
    sha = hashlib.sha256((model / "arcface.onnx").read_bytes()).hexdigest()
    assert gen.embedding_space == f"arcface-onnx:{sha}"
    tiny = load_generator("tiny", cache_dir=str(tiny_dirs[0].parent.parent))
    assert tiny.embedding_space.startswith("tiny:")  # its own: no embedder has it
