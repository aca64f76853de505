"""The idiff-face generator on tiny random checkpoints in the published IDiff-Face layout."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from idiff_tiny import TINY_T, unit_vectors, write_tiny

import facesynth
from facesynth.errors import FacesynthError, ModelNotFoundError, UserInputError
from facesynth.generators import load_generator
from facesynth.generators.idiff_face import (
    DECODER_STEM,
    PUBLISHED_UNET,
    ConditionalUNet,
    ddim_timesteps,
    guidance_weight,
    linear_schedule,
    load_weights,
    main,
    negative_identities,
    unet_files,
)
from facesynth.interfaces import BankConditionedGenerator, Generator
from facesynth.recipe import load_recipe

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("idiff-face"))


def generator(root: Path, **options):
    return load_generator("idiff-face", model=str(root), **options)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(i) for i in images])


def test_published_layout_loads_strictly(tiny_root: Path) -> None:
    g = generator(tiny_root, sampler="ddim", steps=2)
    assert isinstance(g, Generator) and isinstance(g, BankConditionedGenerator)
    state = torch.load(tiny_root / f"{unet_files(g.options.checkpoint)[1]}.ckpt", weights_only=True)
    eps_keys = {k.removeprefix("eps_model.") for k in state if k.startswith("eps_model.")}
    assert eps_keys == set(g.unet.state_dict()) and "context_emb.weight" in eps_keys
    assert set(state) - {f"eps_model.{k}" for k in eps_keys} == set(linear_schedule(1))
    decoder_keys = set(torch.load(tiny_root / f"{DECODER_STEM}.pt", weights_only=True))
    assert decoder_keys == set(g.decoder.state_dict()) and "quantize.embedding.weight" in decoder_keys
    assert g.latent_shape == (3, 8, 8) and g.T == TINY_T
    (image,) = g.generate(unit_vectors(1, 0), [1])
    assert image.size == (32, 32) and image.mode == "RGB"


def test_published_sizes_give_the_published_parameter_count() -> None:
    # configs/model/unet_cond_ca_cpd25.yaml states "# PARAMS: 216341187" for these sizes
    with torch.device("meta"):
        unet = ConditionalUNet(**PUBLISHED_UNET)
    assert sum(p.numel() for p in unet.parameters()) == 216_341_187


def test_layout_errors_name_the_file(tiny_root: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_root, tmp_path / "broken")
    (broken / f"{DECODER_STEM}.pt").unlink()
    with pytest.raises(
        ModelNotFoundError, match="models/autoencoder/first_stage_decoder_state_dict.pt is missing"
    ):
        generator(broken)
    with pytest.raises(ModelNotFoundError, match="trained_models/other/.hydra/config.yaml"):
        generator(tiny_root, checkpoint="other")
    # a weight that is not in the config's model is refused, not silently dropped
    weights = broken / f"{unet_files('unet-cond-ca-bs512-150K-cpd25')[1]}.ckpt"
    state = torch.load(weights, weights_only=True)
    torch.save({**state, "eps_model.extra.weight": torch.zeros(1)}, weights)
    shutil.copy(tiny_root / f"{DECODER_STEM}.pt", broken / f"{DECODER_STEM}.pt")
    with pytest.raises(UserInputError, match=r"does not match its config \(unexpected \['eps_model.extra"):
        generator(broken)
    with pytest.raises(UserInputError, match="ddpm sampler runs all 25 steps"):
        generator(tiny_root, steps=10)


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoint_pickle_is_refused(tiny_root: Path, tmp_path: Path) -> None:
    evil = shutil.copytree(tiny_root, tmp_path / "evil")
    marker = tmp_path / "pwned"
    weights = evil / f"{unet_files('unet-cond-ca-bs512-150K-cpd25')[1]}.ckpt"
    with open(weights, "wb") as f:
        pickle.dump({"eps_model.image_proj.weight": Evil(marker)}, f)
    with pytest.raises(FacesynthError, match="refusing to load .*ema_averaged_model.ckpt"):
        generator(evil)
    assert not marker.exists()
    torch.save({"x": Evil(marker)}, evil / f"{DECODER_STEM}.pt")  # torch's zip format: refused too
    with pytest.raises(FacesynthError, match="refusing to load"):
        load_weights(evil / f"{DECODER_STEM}.pt")
    assert not marker.exists()


def test_ddpm_and_schedule_match_the_published_code(tiny_root: Path) -> None:
    """See data/idiff_reference_run.py: the published sampler after torch.manual_seed(seed), batch of one."""
    ref = np.load(DATA / "idiff_reference.npz")
    schedule = linear_schedule(1000)
    for name, values in schedule.items():
        np.testing.assert_array_equal(values.numpy(), ref[f"schedule_{name}"], err_msg=name)
    g = generator(tiny_root, batch_size=3)
    with torch.inference_mode():
        latents = g.sample(ref["contexts"], ref["seeds"].tolist())
        images = g.decode(latents)
    scale = np.abs(ref["latents"]).max()
    assert np.abs(latents.numpy() - ref["latents"]).max() <= 1e-5 * scale
    assert np.abs(images.astype(int) - ref["images"]).max() <= 1
    # classifier-free guidance: the published (1 - s) eps_u + s eps_c with s = 1.5 is w = 0.5 on the empty context
    guided = generator(tiny_root, guidance=float(ref["cfg_scale"]) - 1)
    with torch.inference_mode():
        latent = guided.sample(ref["contexts"][:1], ref["seeds"][:1].tolist())
    assert np.abs(latent.numpy() - ref["cfg_latent"]).max() <= 1e-5 * np.abs(ref["cfg_latent"]).max()
    assert np.abs(guided.decode(latent).astype(int) - ref["cfg_image"]).max() <= 1


def test_ddim_matches_diffusers_ddim_scheduler(tiny_root: Path) -> None:
    from diffusers import DDIMScheduler

    g = generator(tiny_root, sampler="ddim", steps=5)
    vectors, seeds = unit_vectors(1, 3), [5]
    scheduler = DDIMScheduler(
        num_train_timesteps=TINY_T,
        trained_betas=g.schedule["betas"].numpy(),
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == ddim_timesteps(TINY_T, 5) == [20, 15, 10, 5, 0]
    with torch.inference_mode():
        ours = g.sample(vectors, seeds)
        x = torch.stack(
            [torch.randn(g.latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
        )
        c, _ = g._contexts(vectors, None)
        for t in scheduler.timesteps:
            x = scheduler.step(g.eps(x, int(t), c, None), t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5 * float(x.abs().max()))


def test_image_depends_only_on_its_own_inputs(tiny_root: Path) -> None:
    from facesynth.conditions import made_with

    g = generator(
        tiny_root, sampler="ddim", steps=3, eta=1.0, guidance=0.5, negative="farthest", batch_size=4
    )
    assert made_with(g)["device"] == "cpu"  # what decides whether its images can be remade exactly
    bank = unit_vectors(6, 1)
    identities, seeds = [0, 3, 5, 3], [10, 11, 12, 13]
    together = pixels(g.generate_in_bank(bank[identities], seeds, identities, bank))
    alone = pixels(g.generate_in_bank(bank[[3]], [11], [3], bank))
    reordered = pixels(g.generate_in_bank(bank[[5, 3]], [12, 11], [5, 3], bank))
    np.testing.assert_array_equal(together[1], alone[0])
    np.testing.assert_array_equal(together[[2, 1]], reordered)
    assert not np.array_equal(together[1], together[3])  # same identity, other seed


def test_different_contexts_give_different_images(tiny_root: Path) -> None:
    g = generator(tiny_root, sampler="ddim", steps=3)
    vectors = unit_vectors(2, 5)
    a, b = pixels(g.generate(vectors, [7, 7])).astype(float)
    assert np.abs(a - b).mean() > 10  # grey levels; seeds are equal, only the context differs
    np.testing.assert_array_equal(pixels(g.generate(vectors[:1], [7]))[0], a)


def test_guidance_zero_is_plain_sampling_and_guidance_changes_images(tiny_root: Path) -> None:
    bank, identities, seeds = unit_vectors(4, 2), [0, 1], [3, 4]
    plain = pixels(generator(tiny_root, sampler="ddim", steps=3).generate(bank[:2], seeds))
    for negative in ("empty", "farthest"):
        zero = generator(tiny_root, sampler="ddim", steps=3, guidance=0.0, negative=negative)
        np.testing.assert_array_equal(pixels(zero.generate_in_bank(bank[:2], seeds, identities, bank)), plain)
    far = generator(tiny_root, sampler="ddim", steps=3, guidance=2.0, negative="farthest")
    guided = pixels(far.generate_in_bank(bank[:2], seeds, identities, bank))
    assert np.abs(guided.astype(float) - plain).mean() > 1
    adapt = generator(
        tiny_root, sampler="ddim", steps=3, guidance=2.0, negative="farthest", guidance_schedule="linear"
    )
    assert not np.array_equal(pixels(adapt.generate_in_bank(bank[:2], seeds, identities, bank)), guided)
    with pytest.raises(UserInputError, match="'farthest' picks another identity of the bank"):
        far.generate(bank[:2], seeds)


def test_negative_choice_on_a_planted_bank() -> None:
    # identity 0 is e0; the others sit at known cosines to it: 0.9, -0.8, 0.1, 0.3, -0.2
    cosines = np.array([0.9, -0.8, 0.1, 0.3, -0.2])
    bank = np.zeros((6, 8), np.float32)
    bank[0, 0] = 1
    bank[1:, 0] = cosines
    bank[1:, 1:6] = np.diag(np.sqrt(1 - cosines**2))
    bank *= np.array([[1.0], [2.0], [0.5], [1.0], [3.0], [1.0]], np.float32)  # norms do not matter
    assert negative_identities(bank, [0], [1], "farthest").tolist() == [2]
    assert negative_identities(bank, [0], [1], "closest").tolist() == [1]
    assert negative_identities(bank, [0], [1], "median").tolist() == [3]  # sorted: -0.8 -0.2 [0.1] 0.3 0.9
    assert negative_identities(bank, [1], [1], "farthest").tolist() == [2]  # e0-like 1 vs -0.8 one
    drawn = negative_identities(bank, [0] * 200, list(range(200)), "random")
    assert 0 not in drawn and set(drawn) == {1, 2, 3, 4, 5}
    np.testing.assert_array_equal(drawn, negative_identities(bank, [0] * 200, list(range(200)), "random"))
    with pytest.raises(UserInputError, match="at least 2 identities"):
        negative_identities(bank[:1], [0], [1], "closest")


def test_guidance_schedule() -> None:
    assert guidance_weight(0.5, "constant", 900, 1000) == 0.5
    assert guidance_weight(0.5, "linear", 0, 1000) == 0.5
    assert guidance_weight(0.5, "linear", 500, 1000) == 0.25
    assert ddim_timesteps(1000, 50)[:3] == [980, 960, 940] and ddim_timesteps(1000, 50)[-1] == 0


def test_learnable_empty_context(tmp_path: Path) -> None:
    root = write_tiny(tmp_path / "uiface", learn_empty_context=True)
    g = generator(root, sampler="ddim", steps=2, guidance=1.0)
    assert (
        isinstance(g.unet.empty_context_embedding, torch.nn.Parameter)
        and g.describe()["learned_empty_context"]
    )
    state = torch.load(root / f"{unet_files(g.options.checkpoint)[1]}.ckpt", weights_only=True)
    torch.testing.assert_close(
        g.unet.empty_context_embedding.data, state["eps_model.empty_context_embedding"]
    )
    assert float(state["eps_model.empty_context_embedding"].abs().sum()) > 0
    assert set(ConditionalUNet(learn_empty_context=False).state_dict()).isdisjoint(
        {"empty_context_embedding"}
    )


@pytest.mark.slow
def test_safetensors_conversion_gives_the_same_images(tiny_root: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_root, tmp_path / "converted")
    done = subprocess.run(
        [sys.executable, "-m", "facesynth.generators.idiff_face", "convert", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    written = done.stdout.split()
    assert [Path(p).suffix for p in written] == [".safetensors", ".safetensors"]
    for pickled in [*folder.rglob("*.ckpt"), folder / f"{DECODER_STEM}.pt"]:
        pickled.write_bytes(b"not read: the .safetensors beside it is")
    options = {"sampler": "ddim", "steps": 2}
    vectors = unit_vectors(1, 9)
    expected = pixels(generator(tiny_root, **options).generate(vectors, [1]))
    np.testing.assert_array_equal(pixels(generator(folder, **options).generate(vectors, [1])), expected)
    assert main(["convert", str(tmp_path / "nowhere")]) == 2


def test_recipes_validate() -> None:
    plain = load_recipe(ROOT / "recipes" / "idiff-face-10k.yaml")
    assert plain.generator.name == "idiff-face" and plain.generator.options["sampler"] == "ddpm"
    assert plain.identities.count == 10050 and [f.name for f in plain.filters] == ["face"]
    neg = load_recipe(ROOT / "recipes" / "negfacediff-10k.yaml")
    assert neg.generator.options["negative"] == "farthest" and neg.generator.options["guidance"] == 0.5
    assert neg.generator.options["sampler"] == "ddim" and neg.generator.options["steps"] == 50


@pytest.mark.slow
def test_facesynth_run_with_negative_guidance(tiny_root: Path, tmp_path: Path) -> None:
    recipe = {
        "name": "idiff-tiny",
        "seed": 2,
        "output": {"image_format": "png", "identities_per_unit": 2},
        "identities": {"count": 4, "sampler": "sphere", "max_cosine": 1.0},
        "generator": {
            "name": "idiff-face",
            "model": str(tiny_root),
            "sampler": "ddim",
            "steps": 2,
            "guidance": 0.5,
            "negative": "farthest",
            "batch_size": 3,
        },
        "variations": {"images_per_identity": 2},
        "writer": {"store": "full"},
    }
    out = tmp_path / "out"
    stats = facesynth.run(recipe, out=out, progress=False)
    assert stats["images_kept"] == 8 and stats["generator"]["negative"] == "farthest"
    import pyarrow.parquet as pq

    from facesynth.encoding import encode_image

    row = pq.read_table(out / "data" / "train-00001-of-00002.parquet").to_pylist()[1]
    assert (
        encode_image(facesynth.regenerate(out, row["identity"], row["attempt"]), "png", 95)
        == row["image"]["bytes"]
    )
