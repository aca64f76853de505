"""Vec2Face: the published file layout, exact per-image randomness, batch independence, safe loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facesynth.errors import FacesynthError, ModelNotFoundError, UserInputError
from facesynth.generators import load_generator
from facesynth.generators.vec2face import (
    STATE_KEY,
    TOKENS,
    WEIGHTS_PTH,
    Vec2FaceConfig,
    Vec2FaceModel,
    build_random_vec2face,
    convert_to_safetensors,
    mask_ratios,
    next_masks,
    to_pil,
    to_uint8,
)

FIXTURE = Path(__file__).parent / "fixtures" / "vec2face_reference.npz"


@pytest.fixture(scope="session")
def vec2face_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vec2face")
    build_random_vec2face(folder)  # the tiny config, torch seed 0: the fixture's weights
    return folder


@pytest.fixture(scope="session")
def vec2face(vec2face_dir: Path):
    return load_generator("vec2face", model=str(vec2face_dir), device="cpu", batch_size=8)


@pytest.fixture(scope="session")
def raw_vectors() -> np.ndarray:
    rng = np.random.default_rng(5)
    return (rng.standard_normal((8, 512)) * 1.1).astype(np.float32)  # norm ~25, like ArcFace features


def test_published_file_layout_loads_strictly(vec2face_dir):
    checkpoint = torch.load(vec2face_dir / WEIGHTS_PTH, weights_only=True)
    assert set(checkpoint) == {STATE_KEY}
    state = checkpoint[STATE_KEY]
    # The published top-level modules, including the ones generation does not use.
    prefixes = {key.split(".")[0] for key in state}
    assert prefixes == {
        "token_emb", "latent_prior_proj_f", "feature_token", "center_token", "im_decoder",
        "im_decoder_proj", "patch_embed", "blocks", "norm", "decoder_embed",
        "decoder_pos_embed_learned", "decoder_blocks", "decoder_norm",
    }  # fmt: skip
    assert state["feature_token.weight"].shape == (TOKENS, 1)
    assert state["token_emb.position_ids"].tolist() == [list(range(TOKENS + 1))]
    assert "im_decoder.up.1.block.0.nin_shortcut.weight" in state  # 32 -> 64 channels at level 1
    config = Vec2FaceConfig(**json.loads((vec2face_dir / "config.json").read_text()))
    Vec2FaceModel(config).load_state_dict(state, strict=True)


@pytest.mark.slow
def test_published_size_has_the_published_shapes():
    """vec2face_vit_base_patch16 with vqgan.yaml: the shapes of BooBooWu/Vec2Face's generator file."""
    with torch.device("meta"):
        state = Vec2FaceModel(Vec2FaceConfig()).state_dict()
    expected = {
        "latent_prior_proj_f.weight": (768, 512),
        "center_token.weight": (49, 768),
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "blocks.11.attn.qkv.weight": (2304, 768),
        "blocks.11.mlp.fc1.weight": (3072, 768),
        "decoder_blocks.7.mlp.fc2.weight": (768, 3072),
        "decoder_pos_embed_learned": (1, 50, 768),
        "im_decoder_proj.weight": (256, 768),
        "im_decoder.conv_in.weight": (512, 256, 3, 3),
        "im_decoder.mid.block_2.conv2.weight": (512, 512, 3, 3),
        "im_decoder.up.3.block.0.nin_shortcut.weight": (256, 256, 1, 1),
        "im_decoder.up.4.upsample.conv.weight": (512, 512, 3, 3),
        "im_decoder.conv_out.weight": (3, 128, 3, 3),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert "blocks.12.norm1.weight" not in state and "decoder_blocks.8.norm1.weight" not in state
    assert "im_decoder.up.0.upsample.conv.weight" not in state
    assert len(state) == 349  # as the published MaskedGenerativeEncoderViT (checked in the scratch run)


def test_matches_the_published_code(vec2face, raw_vectors):
    """Mask draws and images equal the published code's (see fixtures/README.md for how they were made)."""
    ref = np.load(FIXTURE)
    vectors = ref["vectors"]
    seeds = [int(s) for s in ref["seeds"]]
    for k, seed in enumerate(seeds):
        drop, masked, rate = vec2face.draws([seed])[0].next()
        assert rate == ref["ratios"][k]
        assert np.array_equal(masked.numpy(), ref["masks"][k])
        assert int(drop.sum()) == 5 and bool((masked | ~drop).all())  # ceil(49 * 0.1) dropped, all masked
    images = np.stack([np.asarray(im) for im in vec2face.generate(vectors, seeds[: len(vectors)])])
    diff = np.abs(images.astype(int) - ref["images"].astype(int))
    assert (
        diff.max() <= 1 and (diff > 0).mean() < 1e-3
    )  # bit-identical in the scratch run; CPU kernels may vary


def test_image_depends_only_on_its_vector_and_seed(vec2face, raw_vectors):
    from facesynth.conditions import made_with

    assert made_with(vec2face)["device"] == "cpu"  # what decides whether its images can be remade exactly
    seeds = list(range(100, 108))
    batch = [np.asarray(im) for im in vec2face.generate(raw_vectors, seeds)]
    assert batch[0].shape == (112, 112, 3) and batch[0].dtype == np.uint8
    for i in (0, 5):
        alone = np.asarray(vec2face.generate(raw_vectors[i : i + 1], [seeds[i]])[0])
        assert np.array_equal(alone, batch[i])
    # reordered and in a smaller batch: the same images
    again = vec2face.generate(raw_vectors[[5, 0, 3]], [seeds[5], seeds[0], seeds[3]])
    assert np.array_equal(np.asarray(again[0]), batch[5]) and np.array_equal(np.asarray(again[2]), batch[3])


def test_different_vectors_and_seeds_give_different_images(vec2face, raw_vectors):
    same_seed = [np.asarray(im).astype(int) for im in vec2face.generate(raw_vectors[:4], [7] * 4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert np.abs(same_seed[a] - same_seed[b]).mean() > 2
    other_seeds = [
        np.asarray(im).astype(int) for im in vec2face.generate(raw_vectors[:1].repeat(4, 0), [1, 2, 3, 4])
    ]
    assert any(np.abs(other_seeds[0] - x).mean() > 0 for x in other_seeds[1:])  # the mask changes the image


def test_mask_ratios_of_a_batch_equal_the_published_draws_per_seed(vec2face):
    """One vectorised draw for a batch gives, bit for bit, each seed's ``truncnorm.rvs(1)`` after ``np.random.seed``."""
    seeds = [0, 1, 7, 2**32 + 5, 2**63 - 1, *range(1000, 1300)]
    batch = mask_ratios(vec2face.ratio, seeds, passes=3)
    for row, seed in enumerate(seeds):
        np.random.seed(seed % 2**32)  # what the published script does before a forward pass
        expected = [vec2face.ratio.rvs(1)[0] for _ in range(3)]
        assert batch[row].tolist() == expected
    (draws,) = vec2face.draws([seeds[0]], passes=2)
    assert [draws.next()[2], draws.next()[2]] == batch[0, :2].tolist()
    with pytest.raises(RuntimeError, match="2 forward passes"):
        draws.next()


def test_masks_of_a_batch_equal_each_image_drawn_alone(vec2face):
    seeds = list(range(500, 800))
    batch = vec2face.draws(seeds, passes=2)
    alone = vec2face.draws(seeds, passes=2)
    for _ in range(2):  # two forward passes: each image's streams go on where they were
        drop, masked, rates = next_masks(batch)
        for row, draws in enumerate(alone):
            d, m, r = draws.next()
            assert torch.equal(drop[row], d) and torch.equal(masked[row], m) and rates[row] == r
    assert len({tuple(m.tolist()) for m in masked}) == len(seeds)  # every image its own mask


def test_uint8_conversion_equals_the_published_expression():
    x = torch.cat([torch.linspace(-1.2, 1.2, 100_003), torch.rand(200_000) * 2 - 1]).reshape(1, 3, 11, -1)
    x = torch.cat([x, x.flip(3)])  # two images
    published = ((x.permute(0, 2, 3, 1).numpy() + 1) / 2 * 255).clip(0, 255).astype(np.uint8)
    assert np.array_equal(to_uint8(x.clone()), published.transpose(0, 3, 1, 2))
    assert np.array_equal(np.stack([np.asarray(image) for image in to_pil(x.clone())]), published)


def test_mask_ratio_options_bound_the_draws(vec2face_dir):
    gen = load_generator("vec2face", model=str(vec2face_dir), device="cpu", mask_ratio_max=0.5)
    rates = [d.next()[2] for d in gen.draws(range(200))]
    assert min(rates) >= 0.1 and max(rates) <= 0.5
    with pytest.raises(UserInputError, match="mask_ratio_min"):
        load_generator("vec2face", model=str(vec2face_dir), mask_ratio_min=0.6, mask_ratio_max=0.5)


def test_safetensors_copy_loads_the_same_model(vec2face_dir, tmp_path, raw_vectors, vec2face):
    folder = tmp_path / "copy"
    (folder / "weights").mkdir(parents=True)
    (folder / WEIGHTS_PTH).write_bytes((vec2face_dir / WEIGHTS_PTH).read_bytes())
    (folder / "config.json").write_text((vec2face_dir / "config.json").read_text())
    convert_to_safetensors(folder)
    (folder / WEIGHTS_PTH).unlink()
    gen = load_generator("vec2face", model=str(folder), device="cpu")
    a = gen.generate(raw_vectors[:2], [3, 4])
    b = vec2face.generate(raw_vectors[:2], [3, 4])
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "weights").mkdir()
    torch.save({STATE_KEY: _RunsCode(str(marker))}, tmp_path / WEIGHTS_PTH)
    with pytest.raises(FacesynthError, match="not a plain tensor checkpoint") as info:
        load_generator("vec2face", model=str(tmp_path), device="cpu")
    assert not marker.exists() and "\n" not in str(info.value)


def test_missing_and_mismatched_weights_are_named(tmp_path, vec2face_dir):
    with pytest.raises(ModelNotFoundError, match="weights/vec2face_generator.pth is missing"):
        load_generator("vec2face", model=str(tmp_path), device="cpu")
    folder = tmp_path / "other-config"
    (folder / "weights").mkdir(parents=True)
    (folder / WEIGHTS_PTH).write_bytes((vec2face_dir / WEIGHTS_PTH).read_bytes())
    config = json.loads((vec2face_dir / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "depth": 2}))
    with pytest.raises(FacesynthError, match="do not fit the Vec2Face architecture.*blocks.1"):
        load_generator("vec2face", model=str(folder), device="cpu")


def test_weight_check_covers_the_attrop_estimators(vec2face_dir):
    from facesynth.generators import GENERATORS

    options = GENERATORS.parse_options("vec2face", {"model": str(vec2face_dir)})
    GENERATORS.get("vec2face").check_weights(options)  # the generator alone is there
    options = GENERATORS.parse_options("vec2face", {"model": str(vec2face_dir), "attrop": {}})
    with pytest.raises(ModelNotFoundError, match="generator.attrop.estimators"):
        GENERATORS.get("vec2face").check_weights(options)


def test_offline_hub_repo_names_the_download_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        ModelNotFoundError, match="hf download BooBooWu/Vec2Face --include 'weights/vec2face_generator.pth'"
    ):
        load_generator("vec2face", device="cpu")


def test_wrong_vectors_are_refused(vec2face):
    with pytest.raises(UserInputError, match="dimension 512"):
        vec2face.generate(np.zeros((1, 128), np.float32), [0])


def test_pose_estimator_has_the_published_6drepnet_layout():
    """RepVGG-B1g2 (deploy) + linear_reg: the keys and shapes of 6DRepNet_300W_LP_AFLW2000.pth."""
    from facesynth.generators.vec2face import SixDRepNet, rotation_from_6d, yaw_degrees

    config = Vec2FaceConfig()
    with torch.device("meta"):
        state = SixDRepNet(config.pose_blocks, config.pose_widths).state_dict()
    assert len(state) == 2 * (1 + 4 + 6 + 16 + 1) + 2
    assert state["layer0.rbr_reparam.weight"].shape == (64, 3, 3, 3)
    assert state["layer1.0.rbr_reparam.weight"].shape == (128, 64, 3, 3)
    assert state["layer1.1.rbr_reparam.weight"].shape == (128, 64, 3, 3)  # layer 2: two groups
    assert state["layer3.15.rbr_reparam.weight"].shape == (512, 256, 3, 3)  # layer 26: two groups
    assert state["layer4.0.rbr_reparam.weight"].shape == (2048, 512, 3, 3)  # layer 27: one group
    assert state["linear_reg.weight"].shape == (6, 2048)
    # the rotation of a known 6D pose: identity -> yaw 0; a rotation about y by 30 degrees -> 30
    angle = np.deg2rad(30.0)
    six = torch.tensor([[np.cos(angle), 0.0, -np.sin(angle), 0.0, 1.0, 0.0]], dtype=torch.float32)
    assert abs(float(yaw_degrees(rotation_from_6d(six))[0]) - 30.0) < 1e-4
