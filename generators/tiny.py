"""A tiny random Arc2Face for smoke tests: real diffusers components, images that are not faces.

``build_tiny_checkpoints`` writes a tiny UNet, VAE, CLIP text encoder, CLIP BPE tokenizer and
scheduler with fixed random weights in exactly the published layouts: a Stable Diffusion 1.5
style base folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) and an Arc2Face style folder (``arc2face/`` UNet, ``encoder/`` text encoder).
``TinyGenerator`` builds them once into a cache folder and then runs the ``arc2face`` generator
on them, so the smoke test exercises the same loading and sampling code as the real model.
``build_tiny_ipadapter`` writes an IP-Adapter FaceID weight file in the h94 layout (optionally
with its FaceID LoRA) and ``build_tiny_lcm_lora`` an LCM-LoRA file in the layout of
``latent-consistency/lcm-lora-sdv1-5``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from facesynth.generators.arc2face import ID_PROMPT, Arc2FaceGenerator, Arc2FaceOptions, SchedulerName
from facesynth.registry import StrictOptions

# Words that get a whole BPE token; the Arc2Face prompt's `id` must be one token.
TINY_WORDS = ("photo", "of", "a", "id", "person", "face", "portrait")

TINY_CONFIG: dict[str, Any] = {
    "format": 1,  # bump when the builder changes what it writes
    "seed": 0,
    "text_encoder": {
        "hidden_size": 768,  # must hold the 512-d vector; 768 like CLIP ViT-L/14, so padding is exercised
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
    },
    "unet": {
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "attention_head_dim": 4,
        "norm_num_groups": 32,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    },
    "vae": {
        # four blocks so that the VAE downsamples by 8, like Stable Diffusion's
        "block_out_channels": [8, 8, 16, 16],
        "layers_per_block": 1,
        "norm_num_groups": 8,
    },
    "words": list(TINY_WORDS),
}

# The noise schedule of Stable Diffusion 1.5's scheduler/scheduler_config.json.
SD15_SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
}


def tiny_config_hash() -> str:
    import diffusers
    import transformers

    # Library versions are in the key because their default initialisers decide the random weights.
    key = json.dumps(
        [TINY_CONFIG, diffusers.__version__, transformers.__version__, torch.__version__], sort_keys=True
    )
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    return Path(os.environ.get("FACESYNTH_CACHE") or Path.home() / ".cache" / "facesynth").expanduser()


def _tiny_vocab() -> tuple[dict[str, int], list[str]]:
    """A CLIP byte-level BPE vocabulary: printable ASCII, whole tokens for TINY_WORDS, specials last."""
    chars = [chr(c) for c in range(33, 127)]
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in TINY_WORDS:
        pieces = list(word)
        pieces[-1] += "</w>"
        merged = pieces[0]
        for piece in pieces[1:]:
            merges.append(f"{merged} {piece}")
            merged += piece
            if merged not in tokens:
                tokens.append(merged)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _write_tokenizer(folder: Path) -> None:
    """The four files of Stable Diffusion 1.5's tokenizer/ folder."""
    vocab, merges = _tiny_vocab()
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    specials = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


_BUILD_LOCK = threading.Lock()  # torch's global RNG makes weight init thread-unsafe


def _build_into(folder: Path) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = TINY_CONFIG
    base, arc2face = folder / "sd15-base", folder / "arc2face"
    _write_tokenizer(base / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **cfg["text_encoder"],
        )
        text_encoder = CLIPTextModel(text_config).eval()
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            cross_attention_dim=text_config.hidden_size,
            **cfg["unet"],
        ).eval()
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * len(cfg["vae"]["block_out_channels"]),
            up_block_types=["UpDecoderBlock2D"] * len(cfg["vae"]["block_out_channels"]),
            sample_size=512,
            **cfg["vae"],
        ).eval()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(base)
    _write_tokenizer_files_again(base / "tokenizer")
    # The Arc2Face repo: fine-tuned UNet (safetensors) and text encoder (pytorch_model.bin).
    unet.save_pretrained(arc2face / "arc2face")
    encoder = arc2face / "encoder"
    encoder.mkdir(parents=True)
    text_encoder.config.to_json_file(encoder / "config.json")
    torch.save(text_encoder.state_dict(), encoder / "pytorch_model.bin")


def _write_tokenizer_files_again(folder: Path) -> None:
    # save_pretrained may rewrite the tokenizer as tokenizer.json only; keep exactly the SD 1.5 files.
    shutil.rmtree(folder)
    _write_tokenizer(folder)


def build_tiny_checkpoints(root: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """Write (once) the tiny checkpoints under ``root``; returns ``(arc2face_dir, base_dir)``.

    The folder is keyed by a hash of the tiny config and written atomically (build in a temporary
    folder, then rename), so concurrent processes never see a half-written checkpoint.
    """
    root = Path(root).expanduser() if root is not None else default_cache_dir()
    final = root / f"tiny-{tiny_config_hash()}"
    if not (final / "arc2face").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-building-", dir=root))
        try:
            _build_into(tmp)
            os.rename(tmp, final)
        except OSError:
            if not (final / "arc2face").is_dir():  # not just another process winning the race
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "arc2face", final / "sd15-base"


def build_tiny_ipadapter(base_dir: Path, out_dir: Path, *, loras: bool = False) -> Path:
    """Write ``ip-adapter-faceid_sd15.bin`` for the tiny base UNet in the h94 layout.

    The file is a torch pickle ``{"image_proj": ..., "ip_adapter": ...}``: an MLP from the 512-d
    face vector to 4 tokens (``proj.0``, ``proj.2``, ``norm``) and per cross-attention ``to_k_ip``
    / ``to_v_ip``, keyed by attention-processor index like the published file. With ``loras``
    the FaceID LoRA of every attention processor is included too, as in ``ip-adapter-faceid_sd15.bin``:
    ``{index}.{to_q,to_k,to_v,to_out}_lora.{down,up}.weight``. The LoRA weights come from their own
    random stream, so the rest of the file is the same with or without them.
    """
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base_dir, subfolder="unet")
    cross, tokens, mult, rank = unet.config.cross_attention_dim, 4, 2, 4
    widths = {
        name: unet.get_submodule(name.rsplit(".", 1)[0]).to_q.in_features for name in unet.attn_processors
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    lora_stream = torch.Generator().manual_seed(TINY_CONFIG["seed"] + 2)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_CONFIG["seed"] + 1)

        def w(*shape: int) -> torch.Tensor:
            return torch.randn(*shape) * 0.02

        def lora(*shape: int) -> torch.Tensor:
            # Large enough to move the tiny model's pixels visibly.
            return torch.randn(*shape, generator=lora_stream) * 0.1

        image_proj = {
            "proj.0.weight": w(512 * mult, 512),
            "proj.0.bias": torch.zeros(512 * mult),
            "proj.2.weight": w(cross * tokens, 512 * mult),
            "proj.2.bias": torch.zeros(cross * tokens),
            "norm.weight": torch.ones(cross),
            "norm.bias": torch.zeros(cross),
        }
        ip_adapter: dict[str, torch.Tensor] = {}
        for index, (name, width) in enumerate(widths.items()):
            is_cross = name.endswith("attn2.processor")
            if is_cross:
                ip_adapter[f"{index}.to_k_ip.weight"] = w(width, cross)
                ip_adapter[f"{index}.to_v_ip.weight"] = w(width, cross)
            if loras:
                kv_in = cross if is_cross else width
                for part, fan_in in (("to_q", width), ("to_k", kv_in), ("to_v", kv_in), ("to_out", width)):
                    ip_adapter[f"{index}.{part}_lora.down.weight"] = lora(rank, fan_in)
                    ip_adapter[f"{index}.{part}_lora.up.weight"] = lora(width, rank)
    path = out_dir / "ip-adapter-faceid_sd15.bin"
    torch.save({"image_proj": image_proj, "ip_adapter": ip_adapter}, path)
    return path


# The UNet layers that diffusers' LCM-LoRA distillation script (train_lcm_distill_lora_sd_wds.py) trains.
LCM_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)


def build_tiny_lcm_lora(unet_dir: Path, out_dir: Path, *, rank: int = 4, alpha: float = 8.0) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` for the UNet in ``unet_dir`` (a UNet folder).

    The layout is that of ``latent-consistency/lcm-lora-sdv1-5``: kohya-style flat keys
    ``lora_unet_<module path with _>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` for
    every layer in ``LCM_LORA_TARGETS``; convolutions get a kxk down and a 1x1 up convolution.
    The weights are fixed random numbers: they make the UNet different, not consistent.
    """
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(unet_dir)
    stream = torch.Generator().manual_seed(TINY_CONFIG["seed"] + 3)

    def lora(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=stream) * 0.1

    state: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not any(name == t or name.endswith("." + t) for t in LCM_LORA_TARGETS):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        if isinstance(module, torch.nn.Conv2d):
            state[f"{key}.lora_down.weight"] = lora(rank, module.in_channels, *module.kernel_size)
            state[f"{key}.lora_up.weight"] = lora(module.out_channels, rank, 1, 1)
        else:
            state[f"{key}.lora_down.weight"] = lora(rank, module.in_features)
            state[f"{key}.lora_up.weight"] = lora(module.out_features, rank)
        state[f"{key}.alpha"] = torch.tensor(alpha)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "pytorch_lora_weights.safetensors"
    save_file(state, path)
    return path


class TinyOptions(StrictOptions):
    size: int = Field(64, ge=64, le=2048)
    steps: int = Field(4, ge=1, le=1000)
    guidance: float = Field(3.0, ge=0.0)
    scheduler: SchedulerName = "dpm++"
    batch_size: int = Field(16, ge=1)
    device: str = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    batch_invariant: bool | None = None  # default: on CPU only
    cache_dir: str | None = None  # default $FACESYNTH_CACHE or ~/.cache/facesynth


class TinyGenerator:
    """Smoke-test generator: the ``arc2face`` code on tiny random weights (outputs are not faces)."""

    Options = TinyOptions
    name = "tiny"
    dim = 512
    uses_prompts = False
    embedding_space: str | None = None  # its own space, no embedder's: set from the weights' hash
    input_scale: ClassVar[Literal["unit", "raw"]] = "unit"  # vectors are L2-normalised here
    score_columns: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def image_size(cls, options: TinyOptions) -> int:
        return options.size

    @classmethod
    def check_weights(cls, options: TinyOptions) -> None:
        """Nothing to check: the tiny weights are built on first use."""

    def __init__(self, options: TinyOptions) -> None:
        self.options = options
        model, base = build_tiny_checkpoints(options.cache_dir)
        self.inner = Arc2FaceGenerator(
            Arc2FaceOptions(
                model=str(model),
                base_model=str(base),
                size=options.size,
                steps=options.steps,
                guidance=options.guidance,
                scheduler=options.scheduler,
                batch_size=options.batch_size,
                device=options.device,
                dtype=options.dtype,
                batch_invariant=options.batch_invariant,
            ),
            space_from_weights=False,
        )
        self.embedding_space = f"tiny:{tiny_config_hash()}"
        self.batch_size = options.batch_size

    def describe(self) -> dict[str, Any]:
        info = self.inner.describe()
        info.update(generator=self.name, model=f"facesynth tiny random Arc2Face ({tiny_config_hash()})")
        info["base_model"] = "facesynth tiny random Stable Diffusion 1.5 layout"
        info["note"] = "smoke-test generator with random weights: images are not faces"
        return info

    def image_scores(self) -> list[dict[str, float]]:
        return []  # no score_columns

    def generate(
        self, vectors: np.ndarray, seeds: Sequence[int], prompts: Sequence[str] | None = None
    ) -> list[Image.Image]:
        return self.inner.generate(vectors, seeds, prompts)


__all__ = [
    "ID_PROMPT",
    "TinyGenerator",
    "build_tiny_checkpoints",
    "build_tiny_ipadapter",
    "build_tiny_lcm_lora",
    "tiny_config_hash",
]
