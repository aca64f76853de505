"""IP-Adapter FaceID (``h94/IP-Adapter-FaceID``) on Stable Diffusion 1.5, with per-image text prompts.

The adapter is loaded through diffusers' ``load_ip_adapter``; the identity vector (an insightface
ArcFace embedding, L2-normalised) is passed as ``ip_adapter_image_embeds`` with zeros as the
negative, as in the diffusers documentation. Unlike Arc2Face the text prompt stays free, so the
core can vary pose, expression, lighting, age and accessories per image through ``prompts``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field, field_validator

from facesynth.errors import UserInputError
from facesynth.faces.arcface_onnx import BUFFALO_L_SPACE
from facesynth.generators.arc2face import (
    SchedulerName,
    initial_latents,
    make_scheduler,
    prepare_for_speed,
    to_pil,
)
from facesynth.generators.checkpoints import (
    SD15_FULL_LAYOUT,
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

DEFAULT_PROMPT = "a photo of a person, face, natural light, high quality"
DEFAULT_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality, blurry"


class IPAdapterFaceIDOptions(StrictOptions):
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    base_revision: str | None = None
    adapter: str = "h94/IP-Adapter-FaceID"  # Hub repo id or a local folder holding weight_name
    revision: str | None = None  # of ``adapter``
    weight_name: str = "ip-adapter-faceid_sd15.bin"
    adapter_scale: float = Field(1.0, ge=0.0)
    prompt: str = DEFAULT_PROMPT  # used when the recipe passes no per-image prompts
    negative_prompt: str = DEFAULT_NEGATIVE
    steps: int = Field(30, ge=1, le=1000)
    guidance: float = Field(7.5, ge=0.0)
    size: int = Field(512, ge=64, le=2048)
    scheduler: SchedulerName = "dpm++"
    device: str = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    batch_size: int = Field(8, ge=1)
    compile: bool = False
    channels_last: bool = True
    batch_invariant: bool | None = None  # default: on CPU only (see arc2face.run_per_sample)

    @field_validator("size")
    @classmethod
    def _multiple_of_8(cls, size: int) -> int:
        if size % 8:
            raise ValueError(f"size must be a multiple of 8 (the VAE downsamples by 8), got {size}")
        return size


def adapter_layout(options: IPAdapterFaceIDOptions) -> Layout:
    return single_file_layout(options.weight_name, f"an IP-Adapter FaceID folder ({options.weight_name})")


def load_adapter_state(path: Any) -> dict[str, dict[str, torch.Tensor]]:
    """Read an IP-Adapter weight file (``.bin`` pickle or ``.safetensors``) into its two parts."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        flat = load_file(path)
        state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            part, _, rest = key.partition(".")
            if part in state:
                state[part][rest] = value
        return state
    return torch.load(path, map_location="cpu", weights_only=True)


def per_image_ip_adapter_pipeline() -> type:
    """StableDiffusionPipeline whose IP-Adapter embeddings are one per image, not one per call.

    diffusers repeats ``ip_adapter_image_embeds`` for every image of the call (one reference face
    for the whole batch); a batch that mixes identities needs row i to condition image i only.
    """
    from diffusers import StableDiffusionPipeline

    class PerImageIPAdapterPipeline(StableDiffusionPipeline):
        def prepare_ip_adapter_image_embeds(
            self, ip_adapter_image: Any, ip_adapter_image_embeds: Any, device: Any, *args: Any, **kwargs: Any
        ) -> list[torch.Tensor]:
            # Already [negatives; positives] per image in the order diffusers stacks the latents.
            return [embeds.to(device) for embeds in ip_adapter_image_embeds]

    return PerImageIPAdapterPipeline


class IPAdapterFaceIDGenerator:
    """Stable Diffusion 1.5 + IP-Adapter FaceID; text prompts steer everything but identity."""

    Options = IPAdapterFaceIDOptions
    name = "ipadapter-faceid"
    # Trained on insightface buffalo_l embeddings: the space of its w600k_r50.onnx.
    embedding_space: str | None = BUFFALO_L_SPACE
    input_scale: ClassVar[Literal["unit", "raw"]] = "unit"  # vectors are L2-normalised here
    score_columns: ClassVar[tuple[str, ...]] = ()
    dim = 512
    uses_prompts = True

    @classmethod
    def image_size(cls, options: IPAdapterFaceIDOptions) -> int:
        return options.size

    @classmethod
    def check_weights(cls, options: IPAdapterFaceIDOptions) -> None:
        resolve_checkpoint(
            options.base_model, options.base_revision, SD15_FULL_LAYOUT, "generator.base_model"
        )
        resolve_checkpoint(options.adapter, options.revision, adapter_layout(options), "generator.adapter")

    def __init__(self, options: IPAdapterFaceIDOptions) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.options = options
        self.batch_size = options.batch_size
        self.device = pick_device(options.device)
        self.dtype = pick_dtype(options.dtype, self.device)
        self.base_dir = resolve_checkpoint(
            options.base_model, options.base_revision, SD15_FULL_LAYOUT, "generator.base_model"
        )
        self.adapter_dir = resolve_checkpoint(
            options.adapter, options.revision, adapter_layout(options), "generator.adapter"
        )

        load = {"torch_dtype": self.dtype}
        scheduler_config = json.loads((self.base_dir / "scheduler" / "scheduler_config.json").read_text())
        self.pipe = per_image_ip_adapter_pipeline()(
            vae=AutoencoderKL.from_pretrained(self.base_dir, subfolder="vae", **load),
            text_encoder=CLIPTextModel.from_pretrained(
                self.base_dir, subfolder="text_encoder", dtype=self.dtype
            ),
            tokenizer=CLIPTokenizer.from_pretrained(self.base_dir, subfolder="tokenizer"),
            unet=UNet2DConditionModel.from_pretrained(self.base_dir, subfolder="unet", **load),
            scheduler=make_scheduler(options.scheduler, scheduler_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        self._load_adapter()
        self.batch_invariant = prepare_for_speed(self.pipe, self.device, options)
        with torch.inference_mode():
            # The negative prompt is the same for every image: encode it once per generator.
            self.negative_embeds = self._encode([options.negative_prompt])

    def _load_adapter(self) -> None:
        path = self.adapter_dir / self.options.weight_name
        state = load_adapter_state(path)
        if not {"image_proj", "ip_adapter"} <= set(state):
            raise UserInputError(
                f"generator.adapter: {path} is not an IP-Adapter file (no image_proj/ip_adapter)"
            )
        if "norm.weight" not in state["image_proj"]:
            raise UserInputError(
                f"generator.adapter: {path} is not an IP-Adapter FaceID file (its image projection takes "
                "CLIP image features, not a face vector); use ip-adapter-faceid_sd15.bin"
            )
        if any("_lora." in key for key in state["ip_adapter"]):
            # Without peft diffusers only logs a warning and drops the FaceID LoRA: never do that silently.
            require_peft("generator.adapter", f"the FaceID LoRA in {self.options.weight_name}")
        self.pipe.load_ip_adapter(
            state, subfolder=None, weight_name=self.options.weight_name, image_encoder_folder=None
        )
        self.pipe.set_ip_adapter_scale(self.options.adapter_scale)

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        if getattr(self, "batch_invariant", False):  # see arc2face.run_per_sample
            return torch.cat([self._encode_batch([p]) for p in prompts])
        return self._encode_batch(prompts)

    def _encode_batch(self, prompts: list[str]) -> torch.Tensor:
        return self.pipe.encode_prompt(prompts, self.device, 1, do_classifier_free_guidance=False)[0]

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {
            "generator": self.name,
            "base_model": o.base_model,
            "base_model_path": str(self.base_dir),
            "base_revision": o.base_revision or snapshot_commit(self.base_dir),
            "adapter": o.adapter,
            "adapter_path": str(self.adapter_dir / o.weight_name),
            "revision": o.revision or snapshot_commit(self.adapter_dir),
            "adapter_scale": o.adapter_scale,
            "prompt": o.prompt,
            "negative_prompt": o.negative_prompt,
            "scheduler": o.scheduler,
            "steps": o.steps,
            "guidance": o.guidance,
            "size": o.size,
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "batch_invariant": self.batch_invariant,
        }

    @torch.inference_mode()
    def image_scores(self) -> list[dict[str, float]]:
        return []  # no score_columns

    def generate(
        self, vectors: np.ndarray, seeds: Sequence[int], prompts: Sequence[str | None] | None = None
    ) -> list[Image.Image]:
        """One image per (vector, seed, prompt); a missing prompt means the ``prompt`` option."""
        array = check_vectors(vectors, seeds, self.dim, self.name)
        if prompts is not None and len(prompts) != len(array):
            raise UserInputError(f"generator '{self.name}': {len(array)} vectors but {len(prompts)} prompts")
        texts = [p or self.options.prompt for p in (prompts or [None] * len(array))]
        images: list[Image.Image] = []
        for start in range(0, len(array), self.batch_size):
            stop = start + self.batch_size
            images += self._generate_batch(array[start:stop], list(seeds[start:stop]), texts[start:stop])
        return images

    def _generate_batch(self, vectors: np.ndarray, seeds: list[int], prompts: list[str]) -> list[Image.Image]:
        size = self.options.size
        factor = self.pipe.vae_scale_factor
        shape = (self.pipe.unet.config.in_channels, size // factor, size // factor)
        latents, generators = initial_latents(seeds, shape)
        v = torch.from_numpy(np.ascontiguousarray(vectors))
        norms = v.norm(dim=1, keepdim=True)
        if (norms == 0).any():
            raise UserInputError(f"generator '{self.name}': an identity vector is all zeros")
        ids = (v / norms).unsqueeze(1)  # [B, 1 face, 512]
        guided = self.guided
        id_embeds = torch.cat([torch.zeros_like(ids), ids]) if guided else ids
        try:
            out = self.pipe(
                prompt_embeds=self._encode(prompts),  # all prompts of the batch in one encoder call
                negative_prompt_embeds=self.negative_embeds.expand(len(vectors), -1, -1) if guided else None,
                ip_adapter_image_embeds=[id_embeds.to(self.device, self.dtype)],
                latents=latents.to(self.device, self.dtype),
                generator=generators,
                num_inference_steps=self.options.steps,
                guidance_scale=self.options.guidance,
                height=size,
                width=size,
                output_type="np",
            )
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise out_of_memory_error(self.name, self.batch_size, size) from None
        return to_pil(out.images)

    @property
    def guided(self) -> bool:
        """Whether diffusers runs classifier-free guidance (it does when guidance > 1)."""
        return self.options.guidance > 1.0
