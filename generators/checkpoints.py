"""Find model weights: a local folder, or a Hugging Face Hub repo in the cache or downloaded.

Shared by the diffusion generators so that every backend fails the same way: a missing file in a
local folder is named, and weights that are neither cached nor downloadable give one line with the
exact ``hf download`` command. Downloads go through ``huggingface_hub``, so ``HF_HOME``,
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` work as everywhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facesynth.errors import FacesynthError, ModelNotFoundError, UserInputError


@dataclass(frozen=True)
class Layout:
    """The files a checkpoint folder must hold, and what to fetch from the Hub to get them."""

    description: str  # e.g. "an Arc2Face folder (arc2face/ UNet, encoder/ text encoder)"
    required: tuple[tuple[str, ...], ...]  # each entry lists alternatives; any one of them suffices
    download: tuple[str, ...]  # allow_patterns for the Hub (only what we load, not whole repos)


def _weights(folder: str, stem: str) -> tuple[str, ...]:
    return (f"{folder}/{stem}.safetensors", f"{folder}/{stem}.bin")


ARC2FACE_LAYOUT = Layout(
    description="an Arc2Face folder (arc2face/ UNet, encoder/ text encoder, as in FoivosPar/Arc2Face)",
    required=(
        ("arc2face/config.json",),
        _weights("arc2face", "diffusion_pytorch_model"),
        ("encoder/config.json",),
        ("encoder/pytorch_model.bin", "encoder/model.safetensors"),
    ),
    download=("arc2face/*", "encoder/*"),
)

# Arc2Face takes only the VAE, tokenizer and scheduler from its Stable Diffusion 1.5 base.
SD15_VAE_LAYOUT = Layout(
    description="a Stable Diffusion 1.5 folder (model_index.json, vae/, tokenizer/, scheduler/)",
    required=(
        ("model_index.json",),
        ("vae/config.json",),
        _weights("vae", "diffusion_pytorch_model"),
        # the slow CLIP tokenizer's files, or the tokenizer.json alone that transformers 5 saves
        ("tokenizer/vocab.json", "tokenizer/tokenizer.json"),
        ("tokenizer/merges.txt", "tokenizer/tokenizer.json"),
        ("scheduler/scheduler_config.json",),
    ),
    download=(
        "model_index.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "tokenizer/*",
        "scheduler/*",
    ),
)

SD15_FULL_LAYOUT = Layout(
    description="a Stable Diffusion 1.5 folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
    required=SD15_VAE_LAYOUT.required
    + (
        ("unet/config.json",),
        _weights("unet", "diffusion_pytorch_model"),
        ("text_encoder/config.json",),
        _weights("text_encoder", "model") + ("text_encoder/pytorch_model.bin",),
    ),
    download=SD15_VAE_LAYOUT.download
    + (
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
    ),
)


def single_file_layout(name: str, description: str) -> Layout:
    return Layout(description=description, required=((name,),), download=(name,))


def _looks_like_path(source: str) -> bool:
    # A Hub id is exactly "owner/name"; anything else with a separator, or starting like a path, is a path.
    return source.startswith(("/", ".", "~")) or source.count("/") != 1 or os.sep != "/" and os.sep in source


def missing_files(folder: Path, layout: Layout) -> list[str]:
    """The first alternative of every required entry that has no file in ``folder``."""
    return [alts[0] for alts in layout.required if not any((folder / a).is_file() for a in alts)]


def hf_download_command(repo_id: str, revision: str | None, layout: Layout) -> str:
    include = " ".join(f"'{p}'" for p in layout.download)
    rev = f" --revision {revision}" if revision else ""
    return f"hf download {repo_id}{rev} --include {include}"


def resolve_checkpoint(source: str, revision: str | None, layout: Layout, option: str) -> Path:
    """Return a local folder holding ``layout`` for ``source`` (a folder or a Hub repo id).

    ``option`` is the recipe key that names ``source`` (``generator.model``), used in messages.
    """
    local = Path(source).expanduser()
    if local.is_dir():
        missing = missing_files(local, layout)
        if missing:
            raise ModelNotFoundError(
                f"{option}: folder {local} is not {layout.description}: {missing[0]} is missing"
            )
        return local.resolve()
    if _looks_like_path(source):
        raise UserInputError(
            f"{option}: folder {local} does not exist (a Hub repo id looks like 'owner/name')"
        )

    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(source, revision=revision, allow_patterns=list(layout.download)))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else type(exc).__name__
        raise ModelNotFoundError(
            f"{option}: weights '{source}'{f' (revision {revision})' if revision else ''} are not in the "
            f"Hugging Face cache ({constants.HF_HUB_CACHE}) and could not be downloaded ({why}); run "
            f"`{hf_download_command(source, revision, layout)}` or set {option} to a local folder "
            f"holding {layout.description}"
        ) from None
    missing = missing_files(folder, layout)
    if missing:
        raise ModelNotFoundError(
            f"{option}: Hub repo '{source}' has no {missing[0]}; it is not {layout.description}"
        )
    return folder


def snapshot_commit(folder: Path) -> str | None:
    """The commit hash of a Hub cache snapshot folder (``.../snapshots/<hash>``), else None."""
    return folder.name if folder.parent.name == "snapshots" else None


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        picked = torch.device(device)
    except RuntimeError:
        raise UserInputError(
            f"generator.device: '{device}' is not a torch device (use auto, cpu, cuda, cuda:1)"
        ) from None
    if picked.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(
            "generator.device: cuda was asked for but torch sees no CUDA GPU; use device: auto or cpu"
        )
    return picked


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on CUDA (what the reference models were run in) and fp32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def require_peft(option: str, what: str) -> None:
    """Raise unless diffusers can apply LoRAs, which it does through peft (a facesynth dependency)."""
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise FacesynthError(
            f"{option}: {what} needs the peft package (a facesynth dependency), which is not installed or too "
            "old: pip install -U peft"
        )


def check_vectors(vectors: Any, seeds: Any, dim: int, generator: str) -> Any:
    """Validate the ``generate`` inputs; returns float32 [N, dim] as a numpy array."""
    import numpy as np

    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        got = f"{array.shape[1]}-d vectors" if array.ndim == 2 else f"an array of shape {array.shape}"
        raise UserInputError(
            f"generator '{generator}' expects identity vectors of dimension {dim} (shape [N, {dim}]), got {got}; "
            f"use an identity space of dimension {dim}"
        )
    if len(seeds) != len(array):
        raise UserInputError(f"generator '{generator}': {len(array)} vectors but {len(seeds)} seeds")
    if not np.isfinite(array).all():
        raise UserInputError(f"generator '{generator}': identity vectors contain NaN or inf")
    return array


def out_of_memory_error(generator: str, batch: int, size: int) -> FacesynthError:
    return FacesynthError(
        f"generator '{generator}': CUDA out of memory on a batch of {batch} images at {size}px; lower "
        f"generator.batch_size (now {batch}) or use dtype fp16, then re-run: finished units are kept"
    )
