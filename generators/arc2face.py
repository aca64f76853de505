"""Arc2Face (foivospar/Arc2Face): Stable Diffusion 1.5 conditioned on a 512-d ArcFace vector.

Conditioning, as published: the L2-normalised identity vector, zero-padded to the text encoder's
width, replaces the token embedding of ``id`` in the prompt ``photo of a id person``; the rest
of Arc2Face's fine-tuned CLIP text encoder runs as usual and its last hidden state is the UNet's
``prompt_embeds``. The negative (classifier-free guidance) embedding is the same encoder's
encoding of the empty prompt. The replacement is a forward hook on the token-embedding table,
so no transformers internals are copied and upgrades of transformers do not break it.

Every image depends only on its own (vector, seed): the initial latents come from
``torch.Generator("cpu").manual_seed(seed)`` and every scheduler in use is deterministic or gets
per-image generators.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field, field_validator

from facesynth.errors import FacesynthError, UserInputError
from facesynth.generators.checkpoints import (
    ARC2FACE_LAYOUT,
    SD15_VAE_LAYOUT,
    Layout,
    check_vectors,
    dtype_name,
    out_of_memory_error,
    pick_device,
    pick_dtype,
    require_peft,
    resolve_checkpoint,
    single_file_layout,
    snapshot_commit,
)
from facesynth.registry import StrictOptions

ID_PROMPT = "photo of a id person"
ID_TOKEN = "id"
LCM_LORA = "latent-consistency/lcm-lora-sdv1-5"
LCM_LORA_FILE = "pytorch_lora_weights.safetensors"
SchedulerName = Literal["dpm++", "ddim", "euler", "lcm"]

log = logging.getLogger(__name__)


class Arc2FaceOptions(StrictOptions):
    model: str = "FoivosPar/Arc2Face"
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    revision: str | None = None  # of ``model``
    base_revision: str | None = None
    steps: int | None = Field(None, ge=1, le=1000)  # 25, or 4 with lcm_lora
    guidance: float | None = Field(None, ge=0.0)  # 3.0, or 1.0 with lcm_lora
    size: int = Field(512, ge=64, le=2048)
    scheduler: SchedulerName | None = None  # dpm++, or lcm with lcm_lora
    lcm_lora: bool | str = False  # True = latent-consistency/lcm-lora-sdv1-5, or a repo id / folder
    device: str = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    batch_size: int = Field(8, ge=1)
    compile: bool = False  # torch.compile the UNet (CUDA; the first batch is slow)
    channels_last: bool = True  # on CUDA only
    batch_invariant: bool | None = None  # exact per-image results across batchings; default: on CPU only

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, size: int) -> int:
        if size % 8:
            raise ValueError(f"size must be a multiple of 8 (the VAE downsamples by 8), got {size}")
        return size


def lcm_lora_source(lcm_lora: bool | str) -> tuple[str, None, Layout, str]:
    """``resolve_checkpoint`` arguments for ``generator.lcm_lora`` (true: the published LCM-LoRA)."""
    source = LCM_LORA if lcm_lora is True else str(lcm_lora)
    layout = single_file_layout(LCM_LORA_FILE, f"an LCM-LoRA folder ({LCM_LORA_FILE})")
    return source, None, layout, "generator.lcm_lora"


def make_scheduler(name: str, base_config: Any) -> Any:
    """A deterministic scheduler of the given kind, with the base model's noise schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(base_config, algorithm_type="dpmsolver++")
    if name == "ddim":
        return DDIMScheduler.from_config(base_config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(base_config)
    return LCMScheduler.from_config(base_config)


@contextlib.contextmanager
def replaced_token_rows(text_encoder: Any, mask: torch.Tensor, rows: torch.Tensor) -> Iterator[None]:
    """Inside the block, the token embeddings at ``mask`` [B, T] become ``rows`` [B, width]."""

    def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.unsqueeze(-1), rows.unsqueeze(1).to(output.dtype), output)

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def identity_prompt_embeds(
    text_encoder: Any, input_ids: torch.Tensor, id_token_id: int, vectors: torch.Tensor
) -> torch.Tensor:
    """Arc2Face conditioning: [B, T, width] last hidden states with ``id`` replaced by the vectors.

    ``input_ids`` [1, T] is the tokenized ``photo of a id person``; ``vectors`` [B, 512] are
    L2-normalised identity vectors on the encoder's device.
    """
    width = text_encoder.config.hidden_size
    ids = input_ids.expand(len(vectors), -1)
    rows = F.pad(vectors, (0, width - vectors.shape[1]))
    with replaced_token_rows(text_encoder, ids == id_token_id, rows):
        return text_encoder(ids)[0]


def _take(value: Any, batch: int, index: int) -> Any:
    """Row ``index`` of every batch-sized tensor in ``value`` (recursing into lists and dicts)."""
    if isinstance(value, torch.Tensor):
        return value[index : index + 1] if value.ndim and value.shape[0] == batch else value
    if isinstance(value, (list, tuple)):
        return type(value)(_take(v, batch, index) for v in value)
    if isinstance(value, dict):
        return {k: _take(v, batch, index) for k, v in value.items()}
    return value


def _concat(outputs: list[Any]) -> Any:
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, dict):  # diffusers' BaseOutput is an OrderedDict
        return type(first)(**{k: _concat([o[k] for o in outputs]) for k in first})
    if isinstance(first, tuple):
        return tuple(_concat(list(parts)) for parts in zip(*outputs, strict=True))
    return first


def _one_at_a_time(function: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    batch = len(sample)
    if batch == 1:
        return function(sample, *args, **kwargs)
    return _concat(
        [function(sample[i : i + 1], *_take(args, batch, i), **_take(kwargs, batch, i)) for i in range(batch)]
    )


def run_per_sample(pipe: Any) -> None:
    """Make the pipeline's UNet and VAE decoder process one image at a time.

    CPU kernels are chosen by tensor shape: oneDNN picks its convolution kernel by batch size,
    small matrix products take other code paths, GroupNorm vectorises differently, so an
    image's pixels move by a grey level when the rest of the batch changes. One image at a time
    always runs the same kernels, which makes image i depend only on its own inputs. The
    schedulers' element-wise steps are batch-invariant already. It costs throughput, so it is
    on by default on CPU (tests, smoke runs) and off on CUDA (option ``batch_invariant``).
    """
    pipe.unet.forward = functools.partial(_one_at_a_time, pipe.unet.forward)
    pipe.vae.decode = functools.partial(_one_at_a_time, pipe.vae.decode)


def prepare_for_speed(pipe: Any, device: torch.device, options: Any) -> bool:
    """Move ``pipe`` to ``device`` with the speed options; returns whether it is batch-invariant."""
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    invariant = options.batch_invariant if options.batch_invariant is not None else device.type == "cpu"
    if invariant:
        run_per_sample(pipe)
    if device.type == "cuda":
        if options.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if options.compile:
            pipe.unet = torch.compile(pipe.unet)
    return invariant


def initial_latents(
    seeds: Sequence[int], shape: tuple[int, ...]
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Per-image CPU noise [B, *shape] and the generators (reused by stochastic schedulers)."""
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
    latents = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
    return latents, generators


def arc2face_space(model_dir: Path) -> str | None:
    """The space of the ``arcface.onnx`` shipped in an Arc2Face folder (None, with a warning, without it)."""
    from facesynth.faces.models import embedding_space

    path = model_dir / "arcface.onnx"
    if not path.is_file():
        log.warning(
            "%s has no arcface.onnx, so no filter can compare images with the identity vectors themselves "
            "(identity and separation use centroids); to enable it run: hf download FoivosPar/Arc2Face "
            "arcface.onnx (or put the file in that folder)",
            model_dir,
        )
        return None
    return embedding_space("arcface-onnx", path)


class Arc2FaceGenerator:
    """Arc2Face as published: ``FoivosPar/Arc2Face`` on top of Stable Diffusion 1.5's VAE."""

    Options = Arc2FaceOptions
    name = "arc2face"
    dim = 512
    uses_prompts = False
    # The identity vectors live in the space of Arc2Face's ArcFace (arcface.onnx): filters whose
    # embedder loads that same file compare images with the bank vector itself.
    embedding_space: str | None = None
    input_scale: ClassVar[Literal["unit", "raw"]] = "unit"  # vectors are L2-normalised here
    score_columns: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def image_size(cls, options: Arc2FaceOptions) -> int:
        return options.size

    @classmethod
    def check_weights(cls, options: Arc2FaceOptions) -> None:
        resolve_checkpoint(options.model, options.revision, ARC2FACE_LAYOUT, "generator.model")
        resolve_checkpoint(options.base_model, options.base_revision, SD15_VAE_LAYOUT, "generator.base_model")
        if options.lcm_lora:
            resolve_checkpoint(*lcm_lora_source(options.lcm_lora))

    def __init__(self, options: Arc2FaceOptions, *, space_from_weights: bool = True) -> None:
        from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.options = options
        self.batch_size = options.batch_size
        self.device = pick_device(options.device)
        self.dtype = pick_dtype(options.dtype, self.device)
        lcm = bool(options.lcm_lora)
        self.steps = options.steps or (4 if lcm else 25)
        self.guidance = options.guidance if options.guidance is not None else (1.0 if lcm else 3.0)
        self.scheduler_name = options.scheduler or ("lcm" if lcm else "dpm++")

        self.model_dir = resolve_checkpoint(
            options.model, options.revision, ARC2FACE_LAYOUT, "generator.model"
        )
        self.base_dir = resolve_checkpoint(
            options.base_model, options.base_revision, SD15_VAE_LAYOUT, "generator.base_model"
        )
        if space_from_weights:
            self.embedding_space = arc2face_space(self.model_dir)
        load = {"torch_dtype": self.dtype}
        unet = UNet2DConditionModel.from_pretrained(self.model_dir, subfolder="arc2face", **load)
        text_encoder = CLIPTextModel.from_pretrained(self.model_dir, subfolder="encoder", dtype=self.dtype)
        vae = AutoencoderKL.from_pretrained(self.base_dir, subfolder="vae", **load)
        tokenizer = CLIPTokenizer.from_pretrained(self.base_dir, subfolder="tokenizer")
        scheduler_config = json.loads((self.base_dir / "scheduler" / "scheduler_config.json").read_text())
        self.pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=make_scheduler(self.scheduler_name, scheduler_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        self.lcm_lora_dir: Path | None = None
        if lcm:
            self._load_lcm_lora()
        self.batch_invariant = prepare_for_speed(self.pipe, self.device, options)

        id_ids = tokenizer.encode(ID_TOKEN, add_special_tokens=False)
        if len(id_ids) != 1:
            raise FacesynthError(
                f"generator.base_model: its tokenizer splits '{ID_TOKEN}' into {len(id_ids)} tokens; Arc2Face "
                "needs the Stable Diffusion 1.5 CLIP tokenizer, where it is one token"
            )
        self.id_token_id = id_ids[0]
        # Tokenized once per generator; the negative embedding is computed once too.
        self.input_ids = self._tokenize(ID_PROMPT)
        with torch.inference_mode():
            self.negative_embeds = self.pipe.text_encoder(self._tokenize(""))[0]

    def _tokenize(self, text: str) -> torch.Tensor:
        tokenizer = self.pipe.tokenizer
        return tokenizer(
            text,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    def _load_lcm_lora(self) -> None:
        require_peft("generator.lcm_lora", "LCM-LoRA")  # before any download
        self.lcm_lora_dir = resolve_checkpoint(*lcm_lora_source(self.options.lcm_lora))
        self.pipe.load_lora_weights(self.lcm_lora_dir, weight_name=LCM_LORA_FILE)
        self.pipe.fuse_lora()  # merged into the UNet weights: no LoRA cost per step

    def describe(self) -> dict[str, Any]:
        """What the dataset card records about how the images were made."""
        return {
            "generator": self.name,
            "model": self.options.model,
            "model_path": str(self.model_dir),
            "revision": self.options.revision or snapshot_commit(self.model_dir),
            "base_model": self.options.base_model,
            "base_model_path": str(self.base_dir),
            "base_revision": self.options.base_revision or snapshot_commit(self.base_dir),
            "lcm_lora": str(self.lcm_lora_dir) if self.lcm_lora_dir else None,
            "scheduler": self.scheduler_name,
            "steps": self.steps,
            "guidance": self.guidance,
            "size": self.options.size,
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "batch_invariant": self.batch_invariant,
            "conditioning": f"'{ID_PROMPT}', '{ID_TOKEN}' token embedding = zero-padded L2-normalised vector",
        }

    def prompt_embeds(self, vectors: np.ndarray) -> torch.Tensor:
        """Arc2Face conditioning for float32 [B, 512] vectors (normalised here)."""
        v = torch.from_numpy(np.ascontiguousarray(vectors)).to(self.device, torch.float32)
        norms = v.norm(dim=1, keepdim=True)
        if (norms == 0).any():
            raise UserInputError(f"generator '{self.name}': an identity vector is all zeros")
        v = v / norms
        if self.batch_invariant:  # see run_per_sample
            return torch.cat([self.prompt_embeds_normalised(row) for row in v.split(1)])
        return self.prompt_embeds_normalised(v)

    def prompt_embeds_normalised(self, v: torch.Tensor) -> torch.Tensor:
        return identity_prompt_embeds(self.pipe.text_encoder, self.input_ids, self.id_token_id, v)

    @torch.inference_mode()
    def image_scores(self) -> list[dict[str, float]]:
        return []  # no score_columns

    def generate(
        self, vectors: np.ndarray, seeds: Sequence[int], prompts: Sequence[str] | None = None
    ) -> list[Image.Image]:
        """One image per (vector, seed); ``prompts`` are ignored (Arc2Face takes no text)."""
        array = check_vectors(vectors, seeds, self.dim, self.name)
        images: list[Image.Image] = []
        for start in range(0, len(array), self.batch_size):
            stop = start + self.batch_size
            images += self._generate_batch(array[start:stop], list(seeds[start:stop]))
        return images

    def _generate_batch(self, vectors: np.ndarray, seeds: list[int]) -> list[Image.Image]:
        size = self.options.size
        factor = self.pipe.vae_scale_factor
        shape = (self.pipe.unet.config.in_channels, size // factor, size // factor)
        latents, generators = initial_latents(seeds, shape)
        try:
            embeds = self.prompt_embeds(vectors)
            out = self.pipe(
                prompt_embeds=embeds,
                negative_prompt_embeds=self.negative_embeds.expand(len(vectors), -1, -1),
                latents=latents.to(self.device, self.dtype),
                generator=generators,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                height=size,
                width=size,
                output_type="np",
            )
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise out_of_memory_error(self.name, self.batch_size, size) from None
        return to_pil(out.images)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """[B, H, W, 3] floats in [0, 1] -> RGB PIL images (rounded as diffusers rounds)."""
    array = (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]
