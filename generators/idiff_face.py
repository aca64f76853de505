"""IDiff-Face (fdbtrs/IDiff-Face, ICCV 2023): a latent DDPM conditioned on a 512-d identity vector.

The model, as published: a ``ConditionalUNet`` with condition type "CA" (the 512-d context is
projected to ``context_channels`` and attended to by every attention block) predicts the noise in
the 3x32x32 latent space of the LDM ffhq256 VQ-f4 autoencoder, whose decoder (with its vector
quantisation) turns the latent into a 128x128 RGB image. Everything is our own implementation; the
state-dict keys and shapes are the published ones and load strictly.

The published checkpoint layout, under the folder named by the ``model`` option (the authors hand
out the weights on request)::

    trained_models/<checkpoint>/.hydra/config.yaml                # the training config: UNet sizes, T
    trained_models/<checkpoint>/checkpoints/ema_averaged_model.ckpt   # schedule buffers + eps_model.*
    models/autoencoder/first_stage_config.yaml
    models/autoencoder/first_stage_decoder_state_dict.pt          # decoder.*, quantize.*, post_quant_conv.*

Each ``.ckpt``/``.pt`` may be replaced by a ``.safetensors`` file of the same stem
(``python -m facesynth.generators.idiff_face convert FOLDER`` writes them). Pickles are read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.

Sampling (options of the generator; every image depends only on its vector, seed, options and,
for negative-identity guidance, the bank; its noise comes from ``torch.Generator("cpu").manual_seed(seed)``):

- ``ddpm`` as published: x_T ~ N(0, I), then for i = T-1 ... 0 one more N(0, I) draw before the
  UNet call at every step with i > 1, so an image equals the published ``sample()`` output after
  ``torch.manual_seed(seed)`` for a batch of one.
- ``ddim``: N evenly spaced steps (t = k * T // N) and ``eta``, as used by IDperturb, UIFace and
  NegFaceDiff.
- guidance: eps = (1 + w) eps(x, c) - w eps(x, c_neg) with c_neg the empty context (classifier-free
  guidance; the learnable empty context where the checkpoint has one) or another identity of the
  bank: the farthest, closest, median-similar or a random one (NegFaceDiff); optionally
  w_t = w (1 - t / T) (AdaptDiff).
"""

from __future__ import annotations

import math
import pickle
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from pydantic import Field
from torch import nn

from facesynth.errors import FacesynthError, ModelNotFoundError, UserInputError
from facesynth.generators.checkpoints import (
    check_vectors,
    dtype_name,
    out_of_memory_error,
    pick_device,
    pick_dtype,
)
from facesynth.registry import StrictOptions

CHECKPOINT = "unet-cond-ca-bs512-150K-cpd25"  # the folder name the IDiff-Face README uses (25% CPD)
AUTOENCODER_DIR = "models/autoencoder"
FIRST_STAGE_CONFIG = f"{AUTOENCODER_DIR}/first_stage_config.yaml"
DECODER_STEM = f"{AUTOENCODER_DIR}/first_stage_decoder_state_dict"


def unet_files(checkpoint: str) -> tuple[str, str]:
    """(hydra config, EMA weights stem) of ``trained_models/<checkpoint>``."""
    root = f"trained_models/{checkpoint}"
    return f"{root}/.hydra/config.yaml", f"{root}/checkpoints/ema_averaged_model"


# ---------------------------------------------------------------------------------------------------
# Checkpoint files


def layout_help(checkpoint: str) -> str:
    config, weights = unet_files(checkpoint)
    return (
        f"an IDiff-Face folder holds {config}, {weights}.ckpt (or .safetensors), {FIRST_STAGE_CONFIG} and "
        f"{DECODER_STEM}.pt (or .safetensors); the authors send the weights on request "
        "(github.com/fdbtrs/IDiff-Face, 'Datasets and pretrained models')"
    )


def model_root(options: IDiffFaceOptions) -> Path:
    """The checkpoint folder ``generator.model``, which must exist."""
    root = Path(options.model).expanduser()
    if not root.is_dir():
        raise ModelNotFoundError(
            f"generator.model: folder {root} does not exist; {layout_help(options.checkpoint)}"
        )
    return root.resolve()


def find_file(root: Path, stem_or_name: str, suffixes: Sequence[str], checkpoint: str) -> Path:
    """``stem + suffix`` under ``root`` (a .safetensors first), else a ModelNotFoundError naming the first."""
    for suffix in sorted(suffixes, key=lambda s: s != ".safetensors"):
        path = root / f"{stem_or_name}{suffix}"
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"generator.model: {root / (stem_or_name + suffixes[0])} is missing; {layout_help(checkpoint)}"
    )


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or, safely, from a pickle (tensors and containers only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FacesynthError(
            f"generator.model: refusing to load {path}: it is not a plain tensor checkpoint "
            f"(torch.load(weights_only=True): {first}); get the file from its authors again"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FacesynthError(f"generator.model: {path} does not hold a flat state dict of tensors")
    return state


_REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def resolve_references(value: Any, config: dict[str, Any], path: Path, depth: int = 0) -> Any:
    """Hydra saves ``${a.b}`` references unresolved; resolve the plain ones (all the configs use)."""
    if depth > 20:
        raise UserInputError(f"generator.model: {path} has circular ${{...}} references")
    if isinstance(value, dict):
        return {k: resolve_references(v, config, path, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_references(v, config, path, depth) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    try:
        whole = _REFERENCE.fullmatch(value)
        if whole:
            return resolve_references(_lookup(config, whole.group(1)), config, path, depth + 1)
        return _REFERENCE.sub(lambda m: str(_lookup(config, m.group(1))), value)
    except KeyError as exc:
        raise UserInputError(f"generator.model: {path}: cannot resolve ${{{exc.args[0]}}}") from None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserInputError(f"generator.model: {path} is not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise UserInputError(f"generator.model: {path} is not a YAML mapping")
    return resolve_references(data, data, path)


# ---------------------------------------------------------------------------------------------------
# The conditional UNet (condition type "CA"). Attribute names are the published state-dict keys.


def time_embedding_input(t: torch.Tensor, channels: int, max_period: int = 10000) -> torch.Tensor:
    """[B] timesteps -> [B, channels] (cos, sin) features of the published sinusoidal embedding."""
    half = channels // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * frequencies.to(t.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedding(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(channels // 4, channels)
        self.act = nn.SiLU()
        self.lin2 = nn.Linear(channels, channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = time_embedding_input(t, self.lin1.in_features).to(self.lin1.weight.dtype)
        return self.lin2(self.act(self.lin1(emb)))


class AdaptiveGroupNorm(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(32, channels)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return (1 + scale) * self.norm(x) + shift


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions; the time embedding scales and shifts the second GroupNorm (AdaGN)."""

    def __init__(self, in_channels: int, out_channels: int, time_channels: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(32, in_channels)
        self.act1 = nn.SiLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb = nn.Sequential(nn.SiLU(), nn.Linear(time_channels, out_channels))
        self.scale_emb = nn.Linear(out_channels, out_channels)
        self.shift_emb = nn.Linear(out_channels, out_channels)
        self.norm2 = AdaptiveGroupNorm(out_channels)
        self.act2 = nn.SiLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act1(self.norm1(x)))
        emb = self.time_emb(t)
        h = self.norm2(
            h, scale=self.scale_emb(emb)[:, :, None, None], shift=self.shift_emb(emb)[:, :, None, None]
        )
        return self.conv2(self.act2(h)) + self.shortcut(x)


class MultiHeadAttention(nn.Module):
    """Attention over [B, C, L] sequences with 1x1 Conv1d projections (keys from ``c`` if given)."""

    def __init__(self, channels: int, heads: int, head_channels: int, kv_channels: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * head_channels
        self.to_q = nn.Conv1d(channels, inner, 1)
        self.to_k = nn.Conv1d(kv_channels or channels, inner, 1)
        self.to_v = nn.Conv1d(kv_channels or channels, inner, 1)
        self.proj_out = nn.Conv1d(inner, channels, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        c = x if c is None else c
        q, k, v = self.to_q(x), self.to_k(c), self.to_v(c)
        b, width, length = q.shape
        q = q.reshape(b * self.heads, width // self.heads, length)
        k = k.reshape(b * self.heads, width // self.heads, k.shape[-1])
        v = v.reshape(b * self.heads, width // self.heads, v.shape[-1])
        scale = 1 / math.sqrt(math.sqrt(width // self.heads))  # on q and k each, as published (fp16-stable)
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        out = torch.einsum("bts,bcs->bct", weight, v).reshape(b, width, length)
        return self.proj_out(out)


class CrossAttentionBlock(nn.Module):
    """Self-attention over the feature map, cross-attention to the context, a small feed-forward.

    The projected context [B, D] becomes D key/value channels over ``head_channels`` tokens.
    """

    def __init__(self, channels: int, context_channels: int, heads: int, head_channels: int) -> None:
        super().__init__()
        heads = heads if heads > 0 else channels // head_channels
        inner = heads * head_channels
        self.context_channels = context_channels
        self.x_proj_in = nn.Conv2d(channels, inner, 1)
        self.x_proj_out = nn.Conv2d(inner, channels, 1)
        self.self_attention = MultiHeadAttention(inner, heads, head_channels)
        self.c_proj_in = nn.Linear(context_channels, context_channels * head_channels)
        self.cross_attention = MultiHeadAttention(inner, heads, head_channels, kv_channels=context_channels)
        self.x_norm = nn.GroupNorm(32, inner)
        self.c_norm = nn.GroupNorm(32, context_channels)
        self.ff = nn.Sequential(nn.Linear(inner, inner * 4), nn.GELU(), nn.Linear(inner * 4, inner))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x_in = x
        x = self.x_proj_in(x).flatten(2)
        c = self.c_norm(self.c_proj_in(c).reshape(b, self.context_channels, -1))
        x = self.self_attention(self.x_norm(x)) + x
        x = self.cross_attention(self.x_norm(x), c) + x
        x = self.ff(self.x_norm(x).transpose(1, 2).contiguous()).transpose(1, 2).contiguous() + x
        return self.x_proj_out(x.reshape(b, -1, h, w)) + x_in


class Block(nn.Module):
    """A residual block, then cross-attention at the resolutions that have it."""

    def __init__(self, in_ch: int, out_ch: int, time_ch: int, attention: CrossAttentionBlock | None) -> None:
        super().__init__()
        self.res = ResidualBlock(in_ch, out_ch, time_ch)
        if attention is not None:
            self.attn = attention

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = self.res(x, t)
        return self.attn(x, c) if hasattr(self, "attn") else x


class MiddleBlock(nn.Module):
    def __init__(self, channels: int, time_ch: int, attention: CrossAttentionBlock) -> None:
        super().__init__()
        self.res1 = ResidualBlock(channels, channels, time_ch)
        self.attn = attention
        self.res2 = ResidualBlock(channels, channels, time_ch)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.res2(self.attn(self.res1(x, t), c), t)


class Resample(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConditionalUNet(nn.Module):
    """IDiff-Face's eps model, condition type "CA"; ``forward`` takes the *projected* context."""

    def __init__(
        self,
        input_channels: int = 3,
        initial_channels: int = 96,
        channel_multipliers: Sequence[int] = (1, 2, 2, 2),
        is_attention: Sequence[bool] = (False, True, True, True),
        attention_heads: int = -1,
        attention_head_channels: int = 32,
        n_blocks_per_resolution: int = 2,
        context_input_channels: int = 512,
        context_channels: int = 256,
        learn_empty_context: bool = False,
    ) -> None:
        super().__init__()
        time_ch = initial_channels * 4

        def attention(channels: int, used: bool) -> CrossAttentionBlock | None:
            if not used:
                return None
            return CrossAttentionBlock(channels, context_channels, attention_heads, attention_head_channels)

        self.image_proj = nn.Conv2d(input_channels, initial_channels, 3, padding=1)
        self.time_emb = TimeEmbedding(time_ch)
        self.context_emb = nn.Linear(context_input_channels, context_channels)
        if learn_empty_context:  # UIFace's checkpoints learn it; IDiff-Face's use zeros
            self.empty_context_embedding = nn.Parameter(torch.zeros(context_channels))
        else:
            self.register_buffer("empty_context_embedding", torch.zeros(context_channels), persistent=False)

        down: list[nn.Module] = []
        channels = initial_channels
        for level, multiplier in enumerate(channel_multipliers):
            out = channels * multiplier
            for _ in range(n_blocks_per_resolution):
                down.append(Block(channels, out, time_ch, attention(out, is_attention[level])))
                channels = out
            if level < len(channel_multipliers) - 1:
                down.append(Resample(nn.Conv2d(channels, channels, 3, 2, 1)))
        self.down = nn.ModuleList(down)
        self.middle = MiddleBlock(channels, time_ch, attention(channels, True))  # type: ignore[arg-type]

        up: list[nn.Module] = []
        for level in reversed(range(len(channel_multipliers))):
            for _ in range(n_blocks_per_resolution):
                up.append(Block(channels * 2, channels, time_ch, attention(channels, is_attention[level])))
            out = channels // channel_multipliers[level]
            up.append(Block(channels + out, out, time_ch, attention(out, is_attention[level])))
            channels = out
            if level > 0:
                up.append(Resample(nn.ConvTranspose2d(channels, channels, 4, 2, 1)))
        self.up = nn.ModuleList(up)
        self.norm = nn.GroupNorm(32, initial_channels)
        self.act = nn.SiLU()
        self.final = nn.Conv2d(channels, input_channels, 3, padding=1)

    def project(self, context: torch.Tensor) -> torch.Tensor:
        """[B, 512] identity vectors -> [B, context_channels] (context dropout is training-only)."""
        return self.context_emb(context)

    def empty_context(self, batch: int) -> torch.Tensor:
        return self.empty_context_embedding.to(self.context_emb.weight.dtype).unsqueeze(0).expand(batch, -1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        t = self.time_emb(t)
        x = self.image_proj(x)
        skips = [x]
        for module in self.down:
            x = module(x, t, c)
            skips.append(x)
        x = self.middle(x, t, c)
        for module in self.up:
            if not isinstance(module, Resample):
                x = torch.cat((x, skips.pop()), dim=1)
            x = module(x, t, c)
        return self.final(self.act(self.norm(x)))


UNET_KEYS = {
    "input_channels",
    "initial_channels",
    "channel_multipliers",
    "is_attention",
    "attention_heads",
    "attention_head_channels",
    "n_blocks_per_resolution",
    "context_input_channels",
    "context_channels",
    "learn_empty_context",
}


def unet_kwargs(model_config: dict[str, Any], path: Path) -> dict[str, Any]:
    """ConditionalUNet arguments from the ``model`` section; anything but "CA" is refused."""
    kind = str(model_config.get("condition_type", "")).lower()
    if kind != "ca" or not model_config.get("is_context_conditional", False):
        raise UserInputError(
            f"generator.model: {path} is a '{model_config.get('condition_type')}' model; facesynth runs IDiff-Face "
            "checkpoints with condition_type 'CA' and is_context_conditional true (the published ones)"
        )
    if int(model_config.get("n_context_classes", 0) or 0) > 0:
        raise UserInputError(
            f"generator.model: {path}: class-label contexts (n_context_classes > 0) are not supported"
        )
    return {k: v for k, v in model_config.items() if k in UNET_KEYS}


# ---------------------------------------------------------------------------------------------------
# The LDM ffhq256 VQ-f4 first stage: quantiser, post-quant conv and decoder.


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class DecoderResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(swish(self.norm2(self.conv1(swish(self.norm1(x))))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class DecoderAttention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, height, width = q.shape
        weight = torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * (int(c) ** -0.5)
        weight = torch.softmax(weight, dim=2)
        out = torch.bmm(v.reshape(b, c, -1), weight.permute(0, 2, 1)).reshape(b, c, height, width)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """The LDM VQ decoder (``ddconfig``: ch, ch_mult, num_res_blocks, z_channels, out_ch, attn_resolutions)."""

    def __init__(
        self,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        z_channels: int,
        **_: Any,
    ) -> None:
        super().__init__()
        levels = len(ch_mult)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = DecoderResBlock(block_in, block_in)
        self.mid.attn_1 = DecoderAttention(block_in)
        self.mid.block_2 = DecoderResBlock(block_in, block_in)
        ups: list[nn.Module] = []
        for level in reversed(range(levels)):
            up = nn.Module()
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                up.block.append(DecoderResBlock(block_in, block_out))
                block_in = block_out
                if res in attn_resolutions:
                    up.attn.append(DecoderAttention(block_in))
            if level != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class Quantizer(nn.Module):
    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Each latent pixel [C] -> its nearest codebook row (squared distance as LDM computes it)."""
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, z.shape[-1])
        table = self.embedding.weight
        distance = (
            torch.sum(flat**2, dim=1, keepdim=True)
            + torch.sum(table**2, dim=1)
            - 2 * torch.einsum("bd,dn->bn", flat, table.t())
        )
        quantised = self.embedding(torch.argmin(distance, dim=1)).view(z.shape)
        quantised = z + (quantised - z)  # the straight-through form, kept for bit-equal outputs
        return quantised.permute(0, 3, 1, 2).contiguous()


class FirstStageDecoder(nn.Module):
    """Latent [B, 3, h, w] -> image [B, 3, 4h, 4w] in [-1, 1] (unclamped): quantise, post-quant conv, decode."""

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        dd = params["ddconfig"]
        embed_dim = int(params.get("embed_dim", 3))
        self.decoder = Decoder(**dd)
        self.quantize = Quantizer(int(params.get("n_embed", 8192)), embed_dim)
        self.post_quant_conv = nn.Conv2d(embed_dim, dd["z_channels"], 1)
        self.factor = 2 ** (len(dd["ch_mult"]) - 1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize(latents)))


# ---------------------------------------------------------------------------------------------------
# Schedule and samplers


def linear_schedule(T: int) -> dict[str, torch.Tensor]:
    """The published buffers for linear betas from 1e-4 * 1000/T to 0.02 * 1000/T (float32)."""
    scale = 1000 / T
    betas = torch.linspace(scale * 0.0001, scale * 0.02, T, dtype=torch.float32)
    alphas = 1 - betas
    alpha_bars = torch.cumsum(torch.log(alphas), dim=0).exp()
    sqrt_one_minus_alpha_bars = (1 - alpha_bars).sqrt()
    return {
        "betas": betas,
        "alphas": alphas,
        "sigmas": betas.sqrt(),
        "sqrt_alphas_inv": 1 / alphas.sqrt(),
        "alpha_bars": alpha_bars,
        "sqrt_alpha_bars": alpha_bars.sqrt(),
        "sqrt_one_minus_alpha_bars": sqrt_one_minus_alpha_bars,
        "one_minus_alphas_over_sqrt_one_minus_alpha_bars": (1 - alphas) / sqrt_one_minus_alpha_bars,
    }


def ddim_timesteps(T: int, steps: int) -> list[int]:
    """Evenly spaced ("leading") timesteps k * (T // steps), descending: 980, 960, ..., 0 for 50 of 1000."""
    return list(range(0, T, T // steps))[:steps][::-1]


def guidance_weight(w: float, schedule: str, t: int, T: int) -> float:
    """w, or AdaptDiff's w (1 - t / T): little guidance early (high t), full guidance at the end."""
    return w * (1 - t / T) if schedule == "linear" else w


def negative_identities(
    bank: np.ndarray, identities: Sequence[int], seeds: Sequence[int], mode: str
) -> np.ndarray:
    """For each identity, the index of another bank identity: by cosine to its bank vector
    the farthest (lowest), the closest (highest), the median (lower median of the N-1 others),
    or one drawn from ``default_rng(seed)`` of the image (``random``)."""
    if len(bank) < 2:
        raise UserInputError(f"generator.negative: '{mode}' needs a bank of at least 2 identities")
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    own = np.asarray(identities, dtype=np.int64)
    if mode == "random":
        draws = np.array([np.random.default_rng([int(s), 0x1D1FF]).integers(len(bank) - 1) for s in seeds])
        return draws + (draws >= own)  # skip the identity itself
    cosines = unit[own] @ unit.T
    cosines[np.arange(len(own)), own] = np.nan
    if mode == "farthest":
        return np.nanargmin(cosines, axis=1)
    if mode == "closest":
        return np.nanargmax(cosines, axis=1)
    order = np.argsort(np.where(np.isnan(cosines), np.inf, cosines), axis=1, kind="stable")
    return order[:, (len(bank) - 2) // 2]


# ---------------------------------------------------------------------------------------------------
# The generator

Sampler = Literal["ddpm", "ddim"]
Negative = Literal["empty", "farthest", "closest", "median", "random"]


class IDiffFaceOptions(StrictOptions):
    model: str  # folder holding trained_models/<checkpoint>/ and models/autoencoder/ (see the module docs)
    checkpoint: str = CHECKPOINT
    sampler: Sampler = "ddpm"
    steps: int | None = Field(None, ge=1)  # ddim: 50; ddpm always runs the checkpoint's T steps
    eta: float = Field(0.0, ge=0.0)  # ddim only
    guidance: float = Field(0.0, ge=0.0)  # w in (1 + w) eps(c) - w eps(c_neg); 0 = plain conditional
    negative: Negative = "empty"
    guidance_schedule: Literal["constant", "linear"] = "constant"  # linear: AdaptDiff's w (1 - t/T)
    device: str = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "fp32"  # fp32: what the published code samples in
    batch_size: int = Field(50, ge=1)
    batch_invariant: bool | None = None  # one image at a time through the networks; default: on CPU only


class IDiffFaceGenerator:
    """IDiff-Face and the samplers of its successors (IDperturb, NegFaceDiff, AdaptDiff)."""

    Options = IDiffFaceOptions
    name = "idiff-face"
    dim = 512
    uses_prompts = False
    # Trained on ElasticFace-Arc embeddings of FFHQ; facesynth has no ElasticFace embedder to compare in.
    embedding_space: str | None = None
    input_scale: ClassVar[Literal["unit", "raw"]] = "unit"  # ElasticFace-style unit embeddings
    score_columns: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def image_size(cls, options: IDiffFaceOptions) -> int:
        return 128  # the published checkpoints'; the training config in the folder decides

    @classmethod
    def check_weights(cls, options: IDiffFaceOptions) -> None:
        root = model_root(options)
        config_name, weights_stem = unet_files(options.checkpoint)
        find_file(root, config_name, ("",), options.checkpoint)
        find_file(root, weights_stem, (".ckpt", ".safetensors"), options.checkpoint)
        find_file(root, FIRST_STAGE_CONFIG, ("",), options.checkpoint)
        find_file(root, DECODER_STEM, (".pt", ".safetensors"), options.checkpoint)

    def __init__(self, options: IDiffFaceOptions) -> None:
        self.options = options
        self.batch_size = options.batch_size
        self.device = pick_device(options.device)
        self.dtype = pick_dtype(options.dtype, self.device)
        self.root = model_root(options)
        self.unet, self.T, self.latent_shape = self._load_unet()
        self.decoder = self._load_decoder()
        self.schedule = linear_schedule(self.T)
        if options.sampler == "ddpm" and options.steps not in (None, self.T):
            raise UserInputError(
                f"generator.steps: the ddpm sampler runs all {self.T} steps of the checkpoint; "
                f"use sampler: ddim for {options.steps} steps"
            )
        self.steps = self.T if options.sampler == "ddpm" else (options.steps or 50)
        if self.steps > self.T:
            raise UserInputError(f"generator.steps: {self.steps} is more than the checkpoint's T = {self.T}")
        invariant = options.batch_invariant
        self.batch_invariant = invariant if invariant is not None else self.device.type == "cpu"

    def _load_unet(self) -> tuple[ConditionalUNet, int, tuple[int, int, int]]:
        config_name, weights_stem = unet_files(self.options.checkpoint)
        config_path = find_file(self.root, config_name, ("",), self.options.checkpoint)
        weights = find_file(self.root, weights_stem, (".ckpt", ".safetensors"), self.options.checkpoint)
        config = read_yaml(config_path)
        try:
            model_config, diffusion = config["model"], config["diffusion"]
            T, schedule = int(diffusion["T"]), str(diffusion.get("schedule_type", "linear"))
            image_size = int(config["constants"]["image_size"])
        except (KeyError, TypeError) as exc:
            raise UserInputError(
                f"generator.model: {config_path} lacks {exc} (an IDiff-Face training config)"
            ) from None
        if schedule.lower() != "linear" or not config.get("latent_diffusion", False):
            raise UserInputError(
                f"generator.model: {config_path}: facesynth runs latent IDiff-Face models with the linear "
                f"schedule (the published ones); this one has schedule_type '{schedule}'"
            )
        with torch.device("meta"):  # no random init of 216M weights that are loaded next
            unet = ConditionalUNet(**unet_kwargs(model_config, config_path))
        state = load_weights(weights)
        eps = {k.removeprefix("eps_model."): v for k, v in state.items() if k.startswith("eps_model.")}
        schedule_keys = set(linear_schedule(1))
        unknown = sorted(k for k in state if not k.startswith("eps_model.") and k not in schedule_keys)
        self._load_strict(unet, eps, weights, unknown, prefix="eps_model.")
        self._check_schedule(state, T, weights)
        channels = int(model_config.get("input_channels", 3))
        latent = image_size // self._first_stage_factor()
        return unet.to(self.device, self.dtype).eval(), T, (channels, latent, latent)

    def _first_stage_factor(self) -> int:
        params = read_yaml(find_file(self.root, FIRST_STAGE_CONFIG, ("",), self.options.checkpoint))
        self.first_stage_params = params.get("params", {})
        if "ddconfig" not in self.first_stage_params:
            raise UserInputError(f"generator.model: {FIRST_STAGE_CONFIG} has no params.ddconfig")
        return 2 ** (len(self.first_stage_params["ddconfig"]["ch_mult"]) - 1)

    def _load_decoder(self) -> FirstStageDecoder:
        weights = find_file(self.root, DECODER_STEM, (".pt", ".safetensors"), self.options.checkpoint)
        with torch.device("meta"):
            decoder = FirstStageDecoder(self.first_stage_params)
        self._load_strict(decoder, load_weights(weights), weights, [])
        return decoder.to(self.device, self.dtype).eval()

    @staticmethod
    def _load_strict(
        module: nn.Module, state: dict[str, torch.Tensor], path: Path, unknown: list[str], prefix: str = ""
    ) -> None:
        """``load_state_dict(strict=True)`` with a one-line error naming the keys as the file names them."""
        expected = module.state_dict()
        missing = sorted(prefix + k for k in set(expected) - set(state))
        unknown = unknown + sorted(prefix + k for k in set(state) - set(expected))
        shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unknown or shapes:
            if missing:
                what = f"missing {missing[:3]}"
            elif unknown:
                what = f"unexpected {unknown[:3]}"
            else:
                key = shapes[0]
                what = f"{prefix}{key} has shape {tuple(state[key].shape)}, the config {tuple(expected[key].shape)}"
            raise UserInputError(f"generator.model: {path} does not match its config ({what})")
        module.load_state_dict(state, strict=True, assign=True)  # the module was built on the meta device
        for submodule in module.modules():  # the one non-persistent buffer, the zero empty context
            for name, buffer in submodule.named_buffers(recurse=False):
                if buffer.is_meta:
                    setattr(submodule, name, torch.zeros(buffer.shape, dtype=buffer.dtype))

    @staticmethod
    def _check_schedule(state: dict[str, torch.Tensor], T: int, path: Path) -> None:
        stored = state.get("betas")
        if stored is not None and not torch.allclose(stored.float(), linear_schedule(T)["betas"], atol=1e-7):
            raise UserInputError(
                f"generator.model: {path}: its betas are not the linear schedule with T = {T}"
            )

    def describe(self) -> dict[str, Any]:
        """What the dataset card records about how the images were made."""
        o = self.options
        return {
            "generator": self.name,
            "model": str(self.root),
            "checkpoint": o.checkpoint,
            "sampler": o.sampler,
            "steps": self.steps,
            "T": self.T,
            "eta": o.eta if o.sampler == "ddim" else None,
            "guidance": o.guidance,
            "negative": o.negative if o.guidance else None,
            "guidance_schedule": o.guidance_schedule if o.guidance else None,
            "size": self.latent_shape[1] * self.decoder.factor,
            "dtype": dtype_name(self.dtype),
            "device": str(self.device),
            "batch_invariant": self.batch_invariant,
            "learned_empty_context": isinstance(self.unet.empty_context_embedding, nn.Parameter),
        }

    def needs_bank(self) -> bool:
        return self.options.guidance > 0 and self.options.negative != "empty"

    def image_scores(self) -> list[dict[str, float]]:
        return []  # no score_columns

    def generate(
        self, vectors: np.ndarray, seeds: Sequence[int], prompts: Sequence[str] | None = None
    ) -> list[Image.Image]:
        """One 128 px image per (vector, seed); ``prompts`` are ignored. Bank negatives need ``generate_in_bank``."""
        if self.needs_bank():
            raise UserInputError(
                f"generator.negative: '{self.options.negative}' picks another identity of the bank; run it "
                "through facesynth run (or call generate_in_bank with the bank)"
            )
        return self._generate(check_vectors(vectors, seeds, self.dim, self.name), seeds, None)

    def generate_in_bank(
        self,
        vectors: np.ndarray,
        seeds: Sequence[int],
        identities: Sequence[int],
        bank_vectors: np.ndarray,
        prompts: Sequence[str] | None = None,
    ) -> list[Image.Image]:
        """``generate`` for images of bank ``identities``; negative guidance picks from ``bank_vectors``."""
        array = check_vectors(vectors, seeds, self.dim, self.name)
        if len(identities) != len(array):
            raise UserInputError(
                f"generator '{self.name}': {len(array)} vectors but {len(identities)} identities"
            )
        negatives = None
        if self.needs_bank():
            bank = np.asarray(bank_vectors, dtype=np.float32)
            negatives = bank[negative_identities(bank, identities, seeds, self.options.negative)]
        return self._generate(array, seeds, negatives)

    @torch.inference_mode()
    def _generate(
        self, vectors: np.ndarray, seeds: Sequence[int], negatives: np.ndarray | None
    ) -> list[Image.Image]:
        images: list[Image.Image] = []
        for start in range(0, len(vectors), self.batch_size):
            stop = start + self.batch_size
            batch_negatives = None if negatives is None else negatives[start:stop]
            try:
                latents = self.sample(vectors[start:stop], list(seeds[start:stop]), batch_negatives)
                images += to_pil(self.decode(latents))
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                raise out_of_memory_error(self.name, self.batch_size, self.describe()["size"]) from None
        return images

    def _contexts(
        self, vectors: np.ndarray, negatives: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projected contexts and, when guiding, the projected negative contexts."""
        to = {"device": self.device, "dtype": self.dtype}
        positive = self._per_image(
            self.unet.project, torch.from_numpy(np.ascontiguousarray(vectors)).to(**to)
        )
        if not self.options.guidance:
            return positive, None
        if negatives is None:
            return positive, self.unet.empty_context(len(vectors))
        negative = torch.from_numpy(np.ascontiguousarray(negatives, dtype=np.float32)).to(**to)
        return positive, self._per_image(self.unet.project, negative)

    def _per_image(self, function: Any, *tensors: torch.Tensor) -> torch.Tensor:
        """``function(*tensors)``, one row at a time when batch-invariant (CPU kernels vary by batch size)."""
        if not self.batch_invariant or len(tensors[0]) == 1:
            return function(*tensors)
        return torch.cat([function(*(t[i : i + 1] for t in tensors)) for i in range(len(tensors[0]))])

    def eps(self, x: torch.Tensor, t: int, c: torch.Tensor, c_neg: torch.Tensor | None) -> torch.Tensor:
        """The (guided) noise prediction in float32 for latents ``x`` at timestep ``t``."""
        steps = torch.full((len(x),), t, dtype=torch.long, device=self.device)
        w = guidance_weight(self.options.guidance, self.options.guidance_schedule, t, self.T)
        x_in = x.to(self.dtype)
        if c_neg is None or w == 0:
            return self._per_image(self.unet, x_in, steps, c).float()
        both = self._per_image(
            self.unet, torch.cat([x_in, x_in]), torch.cat([steps, steps]), torch.cat([c, c_neg])
        )
        eps_c, eps_neg = both.float().chunk(2)
        return (1 + w) * eps_c - w * eps_neg

    def sample(
        self, vectors: np.ndarray, seeds: Sequence[int], negatives: np.ndarray | None = None
    ) -> torch.Tensor:
        """Final latents [B, 3, h, w] (float32) for unit-or-not ``vectors`` as the published model takes them."""
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]

        def noise() -> torch.Tensor:
            return torch.stack([torch.randn(self.latent_shape, generator=g) for g in generators]).to(
                self.device
            )

        c, c_neg = self._contexts(vectors, negatives)
        x = noise()
        s = {k: v.to(self.device) for k, v in self.schedule.items()}
        if self.options.sampler == "ddpm":
            for i in reversed(range(self.T)):
                z = noise() if i > 1 else None  # drawn before the UNet call, none at steps 1 and 0
                eps = self.eps(x, i, c, c_neg)
                x = s["sqrt_alphas_inv"][i] * (
                    x - eps * s["one_minus_alphas_over_sqrt_one_minus_alpha_bars"][i]
                )
                if z is not None:
                    x = x + s["sigmas"][i] * z
            return x
        timesteps = ddim_timesteps(self.T, self.steps)
        one = torch.ones((), device=self.device)
        for k, t in enumerate(timesteps):
            ab = s["alpha_bars"][t]
            ab_prev = s["alpha_bars"][timesteps[k + 1]] if k + 1 < len(timesteps) else one
            eps = self.eps(x, t, c, c_neg)
            x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            sigma = self.options.eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).sqrt() * eps
            if self.options.eta > 0 and k + 1 < len(timesteps):
                x = x + sigma * noise()
        return x

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> uint8 [B, H, W, 3], rounded as torchvision's ``save_image`` rounds."""
        images = self._per_image(self.decoder, latents.to(self.dtype)).float()
        images = (images.clamp(-1, 1) + 1.0) / 2.0
        return images.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(a) for a in images]


# ---------------------------------------------------------------------------------------------------
# Random checkpoints in the published layout (tests, benchmarks, smoke runs)

# The published UNet (configs/model/unet_cond_ca_cpd25.yaml) and first stage (ffhq256 VQ-f4).
PUBLISHED_UNET: dict[str, Any] = {
    "input_channels": 3,
    "initial_channels": 96,
    "channel_multipliers": [1, 2, 2, 2],
    "is_attention": [False, True, True, True],
    "attention_heads": -1,
    "attention_head_channels": 32,
    "n_blocks_per_resolution": 2,
    "context_input_channels": 512,
    "context_channels": 256,
    "learn_empty_context": False,
}
PUBLISHED_FIRST_STAGE: dict[str, Any] = {
    "embed_dim": 3,
    "n_embed": 8192,
    "ddconfig": {
        "double_z": False,
        "z_channels": 3,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}


def write_random_checkpoint(
    root: str | Path,
    unet: dict[str, Any] | None = None,
    first_stage: dict[str, Any] | None = None,
    *,
    T: int = 1000,
    image_size: int = 128,
    checkpoint: str = CHECKPOINT,
    seed: int = 0,
) -> Path:
    """Write random weights (torch's default init, seeded) in exactly the published layout.

    The hydra config keeps ``${...}`` references as hydra writes them; pickles are what
    ``torch.save(state_dict)`` writes, as the published training script does.
    """
    root = Path(root)
    unet = {**PUBLISHED_UNET, **(unet or {})}
    first_stage = first_stage or PUBLISHED_FIRST_STAGE
    torch.manual_seed(seed)
    model = ConditionalUNet(**unet)
    # Torch's default init leaves the identity almost no say (projected contexts ~0.03, eps ~0.25):
    # unit-scale contexts, stronger cross-attention values and a near-unit eps make it steer the
    # images visibly, as it does in a trained model.
    with torch.no_grad():
        nn.init.normal_(model.context_emb.weight)
        for module in model.modules():
            if isinstance(module, CrossAttentionBlock):
                module.cross_attention.to_v.weight.mul_(10)
        model.final.weight.mul_(3)
    if unet["learn_empty_context"]:
        nn.init.normal_(model.empty_context_embedding)
    decoder = FirstStageDecoder(first_stage)
    config_name, weights_stem = unet_files(checkpoint)
    model_section = {"_target_": "models.diffusion.unet.ConditionalUNet", **unet}
    model_section.update(
        input_channels="${constants.input_channels}", n_context_classes="${constants.n_classes}"
    )
    model_section.update(condition_type="CA", is_context_conditional=True, context_dropout_probability=0.25)
    config = {
        "latent_diffusion": True,
        "constants": {
            "seed": 0,
            "image_size": image_size,
            "input_channels": unet["input_channels"],
            "n_classes": 0,
        },
        "diffusion": {
            "_target_": "diffusion.ddpm.DenoisingDiffusionProbabilisticModel",
            "eps_model": "${model}",
            "T": T,
            "schedule_type": "linear",
            "criterion": {"_target_": "torch.nn.MSELoss"},
        },
        "model": model_section,
    }
    for name, text in (
        (config_name, yaml.safe_dump(config, sort_keys=False)),
        (
            FIRST_STAGE_CONFIG,
            yaml.safe_dump({"target": "ldm.models.autoencoder.VQModelInterface", "params": first_stage}),
        ),
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    state = {**linear_schedule(T), **{f"eps_model.{k}": v for k, v in model.state_dict().items()}}
    (root / weights_stem).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, root / f"{weights_stem}.ckpt")
    torch.save(decoder.state_dict(), root / f"{DECODER_STEM}.pt")
    return root


# ---------------------------------------------------------------------------------------------------
# Conversion of the published pickles to safetensors


def convert_to_safetensors(model: str | Path, checkpoint: str = CHECKPOINT) -> list[Path]:
    """Write ``.safetensors`` beside the EMA UNet and decoder pickles (read safely); returns the new files."""
    from safetensors.torch import save_file

    root = Path(model).expanduser()
    written = []
    for stem, suffix in ((unet_files(checkpoint)[1], ".ckpt"), (DECODER_STEM, ".pt")):
        source = find_file(root, stem, (suffix,), checkpoint)
        target = source.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in load_weights(source).items()}, str(target))
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m facesynth.generators.idiff_face convert FOLDER [--checkpoint NAME]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m facesynth.generators.idiff_face")
    parser.add_argument("command", choices=["convert"])
    parser.add_argument("folder")
    parser.add_argument("--checkpoint", default=CHECKPOINT)
    args = parser.parse_args(argv)
    try:
        for path in convert_to_safetensors(args.folder, args.checkpoint):
            print(path)
    except (UserInputError, ModelNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FacesynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
