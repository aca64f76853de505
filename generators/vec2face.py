"""Vec2Face (HaiyuWu/Vec2Face, ICLR 2025): one forward pass from a raw 512-d ArcFace feature to a face.

The model, as published in ``pixel_generator/vec2face/model_vec2face.py`` (``MaskedGenerativeEncoderViT``,
``vec2face_vit_base_patch16``) with the pixel decoder of ``im_decoder.py`` and
``configs/vec2face/vqgan.yaml``, written again here so that the published
``weights/vec2face_generator.pth`` (``{'model_vec2face': state_dict}``) loads with ``strict=True``:

1. The feature (raw, not normalised: norms of 20-30) is projected to the encoder width ``f``; 49 tokens
   on a 7x7 grid are ``feature_token(f)`` (a ``Linear(1, 49)`` applied to every channel).
2. A random share of the 49 tokens is masked (replaced by ``f``) and the lowest ``ceil(49 * mask_ratio_min)``
   of them are also dropped from the encoder input. The share is a truncated normal draw, the tokens
   are chosen by a uniform noise vector. ``f`` is prepended as token 0, position embeddings and a
   LayerNorm are added, and a ViT encoder runs over the kept tokens.
3. The decoder puts its token 0 at every masked place, adds learned positions, runs its ViT blocks,
   projects the 49 grid tokens to the pixel decoder's latent (7x7) and a VQGAN-style convolutional
   decoder upsamples it 16x to a 112x112 RGB image in [-1, 1].

Randomness, per image (the generator contract): the published forward draws the mask ratio from
numpy's legacy global RNG (scipy ``truncnorm.rvs``) and the noise from torch's global RNG, once per
batch. Here every image has its own streams, ``numpy.random.RandomState(seed % 2**32)`` then
``torch.Generator("cpu").manual_seed(seed)``, so image i equals the published code's output for
that vector alone after ``np.random.seed(seed); torch.manual_seed(seed)``, whatever the batch.

AttrOP (the published ``gen_image``): Adam (lr 0.1) on the input vector until the image's ArcFace
cosine to the target >= 0.7, its MagFace norm >= the quality target and (with a pose target) |yaw|
within 5 degrees. The published loop has no cap (their issue #18); here every loop stops at
``max_iterations`` and the row records whether it converged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator
from torch import nn

from facesynth.errors import FacesynthError, ModelNotFoundError
from facesynth.generators.checkpoints import (
    Layout,
    check_vectors,
    out_of_memory_error,
    pick_device,
    resolve_checkpoint,
    snapshot_commit,
)
from facesynth.registry import StrictOptions

GRID = 7  # the decoder reshapes its 49 tokens to a 7x7 latent: fixed by the published model
TOKENS = GRID * GRID
WEIGHTS_PTH = "weights/vec2face_generator.pth"
WEIGHTS_SAFETENSORS = "weights/vec2face_generator.safetensors"
CONFIG_FILE = "config.json"  # optional: architecture sizes (tiny test models); absent = published sizes
STATE_KEY = "model_vec2face"
ARCFACE_PTH = "weights/arcface-r100-glint360k.pth"  # AttrOP's estimators, from the same Hub repo
MAGFACE_PTH = "weights/magface-r100-glint360k.pth"
POSE_PTH = "weights/6DRepNet_300W_LP_AFLW2000.pth"

VEC2FACE_LAYOUT = Layout(
    description=f"a Vec2Face folder ({WEIGHTS_PTH}, as in BooBooWu/Vec2Face)",
    required=((WEIGHTS_PTH, WEIGHTS_SAFETENSORS),),
    download=(WEIGHTS_PTH,),
)


class Vec2FaceConfig(StrictOptions):
    """Architecture sizes; the defaults are the published ``vec2face_vit_base_patch16`` + vqgan.yaml."""

    rep_dim: int = 512
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 768
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 16  # an unused PatchEmbed is part of the published state dict
    image_size: int = 112
    # pixel decoder (configs/vec2face/vqgan.yaml ddconfig)
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    out_ch: int = 3
    # AttrOP's ArcFace / MagFace IResNet-100 estimators (arcface_torch r100)
    iresnet_width: int = 64
    iresnet_layers: tuple[int, int, int, int] = (3, 13, 30, 3)
    # AttrOP's pose estimator: 6DRepNet on RepVGG-B1g2 (deploy form): blocks per stage, stage widths
    pose_blocks: tuple[int, int, int, int] = (4, 6, 16, 1)
    pose_widths: tuple[int, int, int, int, int] = (64, 128, 256, 512, 2048)

    @model_validator(mode="after")
    def _grid(self) -> Vec2FaceConfig:
        if GRID * 2 ** (len(self.ch_mult) - 1) != self.image_size:
            raise ValueError(f"image_size must be 7 * 2**(len(ch_mult) - 1), got {self.image_size}")
        return self


# --------------------------------------------------------------------------------------------------
# The network. Module and attribute names are the published state-dict keys.


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        # As published: scores in float32, max subtracted before the softmax.
        attn = (q.float() @ k.float().transpose(-2, -1)) * self.scale
        attn = (attn - attn.amax(dim=-1, keepdim=True)).softmax(dim=-1)
        return self.proj((attn.to(v.dtype) @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6, as ``vec2face_vit_base_patch16`` builds it)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenEmbedding(nn.Module):
    """Position embeddings + LayerNorm over the 50 tokens (published as BERT-style ``token_emb``)."""

    def __init__(self, dim: int, positions: int) -> None:
        super().__init__()
        self.position_embeddings = nn.Embedding(positions, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-6)  # noqa: N815 - the published key
        self.register_buffer("position_ids", torch.arange(positions).expand((1, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = self.position_embeddings(self.position_ids[:, : x.shape[1]])
        return self.LayerNorm(x + positions)


class PatchEmbed(nn.Module):
    """Unused in generation; kept because its weights are in the published file."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)  # as published; F.silu rounds differently


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.nin_shortcut = (
            nn.Conv2d(out_channels, out_channels, 1, bias=False) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            # As published: the shortcut of a width-changing block is taken from h, not from x.
            return self.nin_shortcut(h) + h
        return x + h


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class PixelDecoder(nn.Module):
    """The VQGAN-style decoder of ``im_decoder.py`` (no attention, no timestep embedding)."""

    def __init__(self, config: Vec2FaceConfig) -> None:
        super().__init__()
        mult = config.ch_mult
        block_in = config.ch * mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        levels: list[nn.Module] = []
        for level in reversed(range(len(mult))):  # from the coarsest resolution up
            up = nn.Module()
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(block_in, config.ch * mult[level]))
                block_in = config.ch * mult[level]
            up.block = nn.ModuleList(blocks)
            if level != 0:
                up.upsample = Upsample(block_in)
            levels.insert(0, up)  # the published ``up`` is indexed by level, finest first
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.block_1(self.conv_in(z)))
        for level in reversed(range(len(self.up))):
            for block in self.up[level].block:
                h = block(h)
            if level != 0:
                h = self.up[level].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class Vec2FaceModel(nn.Module):
    """``MaskedGenerativeEncoderViT`` in inference form: (features, token masks) -> image in [-1, 1]."""

    def __init__(self, config: Vec2FaceConfig) -> None:
        super().__init__()
        self.config = config
        e, d = config.embed_dim, config.decoder_embed_dim
        self.token_emb = TokenEmbedding(e, TOKENS + 1)
        self.latent_prior_proj_f = nn.Linear(config.rep_dim, e)
        self.feature_token = nn.Linear(1, TOKENS)
        self.center_token = nn.Linear(e, TOKENS)  # unused in generation, in the published file
        self.im_decoder = PixelDecoder(config)
        self.im_decoder_proj = nn.Linear(d, config.z_channels)
        self.patch_embed = PatchEmbed(config.patch_size, e)
        self.blocks = nn.ModuleList(Block(e, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(e, eps=1e-6)
        self.decoder_embed = nn.Linear(e, d)
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, TOKENS + 1, d))
        self.decoder_blocks = nn.ModuleList(
            Block(d, config.decoder_num_heads, config.mlp_ratio) for _ in range(config.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)

    def forward(self, rep: torch.Tensor, drop: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] for features ``rep`` [B, rep_dim] and bool token masks [B, 49].

        ``drop`` marks the tokens left out of the encoder (every row drops the same number),
        ``masked`` the tokens replaced by the feature (a superset of ``drop``).
        """
        b = len(rep)
        f = self.latent_prior_proj_f(rep)
        grid = self.feature_token(f.unsqueeze(-1)).permute(0, 2, 1)  # [B, 49, E]
        grid = torch.where(masked.unsqueeze(-1), f.unsqueeze(1), grid)
        x = self.token_emb(torch.cat([f.unsqueeze(1), grid], dim=1))
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=drop.device), ~drop], dim=1)
        x = x[keep].reshape(b, -1, x.shape[-1])
        for block in self.blocks:
            x = block(x)
        x = self.decoder_embed(self.norm(x))

        # Token 0's output stands in for every masked (and dropped) token.
        filler = x[:, 0:1].expand(-1, TOKENS + 1, -1)
        full = filler.clone()
        full[keep] = x.reshape(-1, x.shape[-1])
        all_masked = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=masked.device), masked], dim=1)
        x = torch.where(all_masked.unsqueeze(-1), filler, full) + self.decoder_pos_embed_learned
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        latent = self.im_decoder_proj(x[:, 1:].reshape(b, GRID, GRID, -1)).permute(0, 3, 1, 2)
        return self.im_decoder(latent)


class RepVGGBlock(nn.Module):
    """A RepVGG block in its deploy form: one 3x3 convolution with bias, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.rbr_reparam = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.rbr_reparam(x))


class SixDRepNet(nn.Module):
    """6DRepNet (RepVGG-B1g2, deploy) as ``sixdrepnet.model.SixDRepNet``: image -> 3x3 rotation matrix.

    The published ``6DRepNet_300W_LP_AFLW2000.pth`` keys: ``layer0..layer4`` (RepVGG stages),
    ``linear_reg``. Every even block (counting from stage 1) is a 2-group convolution.
    """

    def __init__(self, blocks: Sequence[int], widths: Sequence[int]) -> None:
        super().__init__()
        self.layer0 = RepVGGBlock(3, widths[0], 2, 1)
        index, cin = 1, widths[0]
        for stage, (count, width) in enumerate(zip(blocks, widths[1:], strict=True), start=1):
            layers = []
            for k in range(count):
                layers.append(RepVGGBlock(cin, width, 2 if k == 0 else 1, 2 if index % 2 == 0 else 1))
                index, cin = index + 1, width
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.linear_reg = nn.Linear(cin, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in range(5):
            x = getattr(self, f"layer{stage}")(x)
        return rotation_from_6d(self.linear_reg(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))


def rotation_from_6d(poses: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt of the two 3-vectors (6DRepNet's ``compute_rotation_matrix_from_ortho6d``)."""

    def unit(v: torch.Tensor) -> torch.Tensor:
        return v / v.pow(2).sum(1).sqrt().clamp(min=1e-8).unsqueeze(1)

    x = unit(poses[:, 0:3])
    z = unit(torch.linalg.cross(x, poses[:, 3:6]))
    y = torch.linalg.cross(z, x)
    return torch.stack([x, y, z], dim=2)


def yaw_degrees(rotation: torch.Tensor) -> torch.Tensor:
    """Yaw of [B, 3, 3] rotations in degrees (6DRepNet's Euler angles, y component; singular case too)."""
    sy = torch.sqrt(rotation[:, 0, 0] ** 2 + rotation[:, 1, 0] ** 2)
    return torch.atan2(-rotation[:, 2, 0], sy) * 180 / np.pi


# --------------------------------------------------------------------------------------------------
# Per-image randomness


class MaskDraws:
    """One image's random streams: its mask ratios (drawn ahead) and token noise (torch), in published order."""

    def __init__(self, seed: int, ratios: np.ndarray, num_dropped: int) -> None:
        self.torch = torch.Generator("cpu").manual_seed(int(seed))
        self.ratios = ratios.tolist()  # this image's mask ratios, one per forward pass
        self.passes = 0  # forward passes drawn so far
        self.num_dropped = num_dropped

    def next_ratio(self) -> float:
        if self.passes == len(self.ratios):
            raise RuntimeError(f"only {len(self.ratios)} forward passes were planned for this image")
        self.passes += 1
        return self.ratios[self.passes - 1]

    def next(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(drop [49] bool, masked [49] bool, mask ratio) for the next forward pass of this image."""
        drop, masked, rates = next_masks([self])
        return drop[0], masked[0], rates[0]


def next_masks(draws: Sequence[MaskDraws]) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(drop [B, 49], masked [B, 49], mask ratios) for the next forward pass of each image.

    Row i is what image i's own streams give (its noise comes from its own generator), so a batch
    equals its images drawn one by one; only the sorting and comparing run once for the batch.
    """
    rates = [d.next_ratio() for d in draws]
    counts = torch.tensor([math.ceil(TOKENS * rate) for rate in rates])
    dropped = draws[0].num_dropped
    noise = torch.stack([torch.rand(TOKENS, generator=d.torch) for d in draws])
    while True:
        ordered = noise.sort(dim=1).values
        drop = noise <= ordered[:, dropped - 1 : dropped]
        masked = noise <= ordered.gather(1, counts[:, None] - 1)
        tied = (drop.sum(1) != dropped) | (masked.sum(1) != counts)
        if not tied.any():
            return drop, masked, rates
        for row in tied.nonzero()[:, 0].tolist():  # the published loop redraws the noise on a tied cut-off
            noise[row] = torch.rand(TOKENS, generator=draws[row].torch)


def mask_ratios(ratio: Any, seeds: Sequence[int], passes: int) -> np.ndarray:
    """[len(seeds), passes]: the first ``passes`` ``ratio.rvs(1)`` draws after ``np.random.seed(seed)``, per seed.

    scipy draws a truncated normal by inversion, ``ppf(uniform)``, from numpy's legacy generator. One
    RandomState reseeded per seed gives each seed's uniforms, and one vectorised ``ppf`` inverts them
    all: the same numbers bit for bit (tested), where a RandomState built per image (~0.3 ms: it
    first seeds itself from the OS) and a scalar ``rvs`` (~0.5 ms) cost more than the rest of an
    image's non-model work.
    """
    legacy = np.random.RandomState()
    uniforms = np.empty((len(seeds), passes))
    for row, seed in enumerate(seeds):
        legacy.seed(int(seed) % 2**32)  # as np.random.seed(seed) seeds the global legacy generator
        uniforms[row] = legacy.uniform(size=passes)
    return ratio.ppf(uniforms)


# --------------------------------------------------------------------------------------------------
# Loading


def load_tensors(path: Path, option: str) -> Any:
    """``torch.load(weights_only=True)``: a pickle that would run code is refused with one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, or torch's RuntimeError for non-tensor content
        raise FacesynthError(
            f"{option}: {path} is not a plain tensor checkpoint and was not loaded (only tensors are "
            f"unpickled, never code): {str(exc).splitlines()[0]}"
        ) from None


def load_config(folder: Path) -> Vec2FaceConfig:
    path = folder / CONFIG_FILE
    if not path.is_file():
        return Vec2FaceConfig()
    try:
        return Vec2FaceConfig(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ModelNotFoundError(
            f"generator.model: {path} is not a Vec2Face architecture config: {exc}"
        ) from None


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The generator's state dict from the safetensors file if present, else the published pickle.

    The pickle is opened with ``weights_only=True``: it must hold only tensors, so a file that
    would run code when unpickled is refused instead of executed.
    """
    safe = folder / WEIGHTS_SAFETENSORS
    if safe.is_file():
        from safetensors.torch import load_file

        return load_file(safe)
    path = folder / WEIGHTS_PTH
    checkpoint = load_tensors(path, "generator.model")
    if not isinstance(checkpoint, dict) or STATE_KEY not in checkpoint:
        raise FacesynthError(f"generator.model: {path} has no '{STATE_KEY}' entry; it is not Vec2Face's file")
    return checkpoint[STATE_KEY]


def build_model(folder: Path) -> Vec2FaceModel:
    """Vec2Face from a folder holding ``weights/vec2face_generator.pth`` (or .safetensors), loaded strictly."""
    config, state = load_config(folder), load_state_dict(folder)
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        model = Vec2FaceModel(config)
    # Fresh (aligned) copies: CPU kernels pick their code path by alignment, and memory-mapped
    # safetensors tensors would round differently from the same weights loaded from the pickle.
    state = {key: value.clone() for key, value in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:])
        raise FacesynthError(
            f"generator.model: the weights in {folder} do not fit the Vec2Face architecture "
            f"({CONFIG_FILE} there, or the published sizes): {detail[:300]}"
        ) from None
    return model.eval().requires_grad_(False)


def convert_to_safetensors(folder: Path) -> Path:
    """Write ``weights/vec2face_generator.safetensors`` beside the published pickle (loaded safely)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in load_state_dict(folder).items()}
    out = folder / WEIGHTS_SAFETENSORS
    save_file(state, out)
    return out


def save_model(model: Vec2FaceModel, folder: Path) -> Path:
    """Save ``model`` in the published layout (``{'model_vec2face': state_dict}``) plus its config."""
    path = folder / WEIGHTS_PTH
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({STATE_KEY: model.state_dict()}, path)
    if model.config != Vec2FaceConfig():
        (folder / CONFIG_FILE).write_text(model.config.model_dump_json(indent=1))
    return path


TINY_CONFIG = Vec2FaceConfig(
    embed_dim=32,
    depth=1,
    num_heads=2,
    decoder_embed_dim=32,
    decoder_depth=1,
    decoder_num_heads=2,
    ch=32,
    num_res_blocks=1,
    z_channels=32,
    iresnet_width=8,
    iresnet_layers=(1, 1, 1, 1),
    pose_blocks=(1, 1, 1, 1),
    pose_widths=(8, 8, 16, 16, 32),
)


def build_random_vec2face(folder: Path, config: Vec2FaceConfig = TINY_CONFIG, seed: int = 0) -> Path:
    """Write a Vec2Face with fixed random weights in the published layout (tests, benchmarks).

    Every tensor is random (norm scales and offsets too), so every weight changes the image.
    """
    torch.manual_seed(seed)
    model = Vec2FaceModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "pos_embed" in name:
                p.normal_(0.0, 0.02)
            elif p.ndim == 1:  # norm scales
                p.normal_(1.0, 0.1)
    return save_model(model, Path(folder))


def build_random_estimators(folder: Path, config: Vec2FaceConfig = TINY_CONFIG, seed: int = 1) -> None:
    """Write random ArcFace and MagFace IResNets and a 6DRepNet in the published files of ``BooBooWu/Vec2Face``."""
    from facesynth.recognition.iresnet import iresnet

    torch.manual_seed(seed)
    for name in (ARCFACE_PTH, MAGFACE_PTH):
        model = iresnet("r100", width=config.iresnet_width, layers=tuple(config.iresnet_layers))
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)  # the published files hold the bare state dict
    pose = SixDRepNet(config.pose_blocks, config.pose_widths)
    torch.save(pose.state_dict(), Path(folder) / POSE_PTH)


# --------------------------------------------------------------------------------------------------
# The generator


ESTIMATORS_LAYOUT = Layout(
    description=f"a folder with Vec2Face's estimators ({ARCFACE_PTH}, {MAGFACE_PTH}, as in BooBooWu/Vec2Face)",
    required=((ARCFACE_PTH,), (MAGFACE_PTH,)),
    download=(ARCFACE_PTH, MAGFACE_PTH),
)
ATTROP_COLUMNS = ("attrop_converged", "attrop_iterations", "attrop_cosine", "attrop_quality", "attrop_yaw")


class AttrOPOptions(StrictOptions):
    """The published ``gen_image`` loop, with a cap: Adam on the input vector until the targets hold."""

    apply_to: Literal["identities", "images"] = "identities"  # HSFace: refine each centre once
    estimators: str | None = None  # folder or Hub repo with the IResNet-100s; default: generator.model
    revision: str | None = None
    min_cosine: float = Field(0.7, ge=-1.0, le=1.0)  # ArcFace cosine of the image to the target vector
    quality: float = Field(27.0, ge=0.0)  # MagFace feature norm
    yaw: float | None = None  # target |yaw| in degrees (6DRepNet, weights/6DRepNet_300W_LP_AFLW2000.pth)
    lr: float = Field(0.1, gt=0.0)
    steps: int = Field(1, ge=1)  # iterations that must meet the targets (the published num_iter)
    max_iterations: int = Field(100, ge=1)  # the cap the published loop lacks (its issue #18)


class Vec2FaceOptions(StrictOptions):
    model: str = "BooBooWu/Vec2Face"  # Hub repo or a folder holding weights/vec2face_generator.pth
    revision: str | None = None
    # The published demo (gradio app) uses mask_ratio_max 0.5; the generation scripts 1.0.
    mask_ratio_min: float = Field(0.1, gt=0.0, le=1.0)
    mask_ratio_max: float = Field(1.0, gt=0.0, le=1.0)
    mask_ratio_mu: float = 0.15
    mask_ratio_std: float = Field(0.25, gt=0.0)
    attrop: AttrOPOptions | None = None
    device: str = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"  # the published scripts run fp32
    batch_size: int = Field(256, ge=1)
    batch_invariant: bool | None = None  # exact per-image results across batchings; default: on CPU only

    @model_validator(mode="after")
    def _ratios(self) -> Vec2FaceOptions:
        if self.mask_ratio_min > self.mask_ratio_max:
            raise ValueError(
                f"mask_ratio_min ({self.mask_ratio_min}) must not exceed mask_ratio_max ({self.mask_ratio_max})"
            )
        return self


def load_iresnet(path: Path, config: Vec2FaceConfig) -> nn.Module:
    """An arcface_torch IResNet-100 (Vec2Face's ArcFace / MagFace estimator), loaded safely and strictly."""
    from facesynth.recognition.iresnet import iresnet

    state = load_tensors(path, "generator.attrop.estimators")
    model = iresnet("r100", width=config.iresnet_width, layers=tuple(config.iresnet_layers))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:])
        raise FacesynthError(
            f"generator.attrop.estimators: {path} is not an IResNet-100: {detail[:300]}"
        ) from None
    return model.eval().requires_grad_(False)


def estimators_folder(model: str, options: AttrOPOptions) -> Path:
    """The folder of AttrOP's ArcFace and MagFace estimators (by default the generator's own repo)."""
    source = options.estimators or model
    return resolve_checkpoint(source, options.revision, ESTIMATORS_LAYOUT, "generator.attrop.estimators")


class AttrOP:
    """Vec2Face's attribute optimisation, per row: each row has its own Adam state, draws and cap.

    For one row this is the published ``gen_image`` at batch size 1 (after seeding the global RNGs
    with the row's seed), stopped after ``max_iterations``: every iteration draws a new mask, scores
    the image (ArcFace cosine to ``targets``, MagFace norm), counts the iteration as met when the
    cosine >= ``min_cosine`` and norm >= ``quality - 1`` (the published tolerances), and takes an
    Adam step on ``100 (1 - cos) + max(quality - norm, 0)`` either way.
    """

    BETAS = (0.9, 0.999)
    EPS = 1e-8

    def __init__(self, generator: Vec2FaceGenerator, options: AttrOPOptions) -> None:
        self.generator, self.options = generator, options
        self.folder = estimators_folder(generator.options.model, options)
        config = generator.model.config
        self.arcface = load_iresnet(self.folder / ARCFACE_PTH, config).to(generator.device)
        self.magface = load_iresnet(self.folder / MAGFACE_PTH, config).to(generator.device)
        self.pose: SixDRepNet | None = None
        if options.yaw is not None:
            path = self.folder / POSE_PTH
            if not path.is_file():
                raise ModelNotFoundError(
                    f"generator.attrop.yaw needs {path}; run `hf download BooBooWu/Vec2Face --include {POSE_PTH}`"
                )
            self.pose = SixDRepNet(config.pose_blocks, config.pose_widths)
            self.pose.load_state_dict(load_tensors(path, "generator.attrop.estimators"), strict=True)
            self.pose = self.pose.eval().requires_grad_(False).to(generator.device)

    def scores(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ArcFace cosine to ``targets``, MagFace norm, yaw or NaN) per row of images in [-1, 1]."""
        cosine = torch.cosine_similarity(self.arcface(images), targets)
        if self.pose is None:
            yaw = torch.full_like(cosine, float("nan"))
        else:  # as published: BGR in [0, 1], yaw clipped to [-90, 90]
            yaw = yaw_degrees(self.pose((images[:, [2, 1, 0]] + 1) / 2)).clamp(-90, 90)
        return cosine, self.magface(images).norm(dim=1), yaw

    def gradient(
        self, x: torch.Tensor, targets: torch.Tensor, drop: torch.Tensor, masked: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gradient of each row's loss, cosine, norm, yaw) for vectors ``x`` and their token masks."""
        o = self.options
        leaf = x.clone().requires_grad_(True)
        with torch.enable_grad():
            image = self.generator.forward(leaf, drop, masked).float().clamp(-1, 1)
            cosine, norm, yaw = self.scores(image, targets)
            loss = (1 - cosine) * 100 + (o.quality - norm).clamp(min=0)
            if o.yaw is not None:
                loss = loss + (o.yaw - yaw.abs()).abs()
            (grad,) = torch.autograd.grad(loss.sum(), leaf)  # row r's gradient is its own loss's
        return grad, cosine.detach(), norm.detach(), yaw.detach()

    def run(
        self, vectors: torch.Tensor, targets: torch.Tensor, draws: list[MaskDraws]
    ) -> tuple[torch.Tensor, list[dict[str, float]]]:
        """Optimised vectors [B, 512] and each row's record (converged, iterations, last scores)."""
        o, gen = self.options, self.generator
        x = vectors.detach().clone().float()
        m, v = torch.zeros_like(x), torch.zeros_like(x)
        step = torch.zeros(len(x), 1, dtype=torch.float64)
        met = [0] * len(x)
        last = [(float("nan"), float("nan"), float("nan"))] * len(x)
        active = list(range(len(x)))
        while active:
            rows = torch.tensor(active)
            drop, masked, _ = next_masks([draws[r] for r in active])
            # One row at a time when batch-invariant: the estimators' kernels then never see the batch.
            chunks = [[k] for k in range(len(active))] if gen.batch_invariant else [list(range(len(active)))]
            parts = [self.gradient(x[rows[c]], targets[rows[c]], drop[c], masked[c]) for c in chunks]
            grad, cosine, norm, yaw = (torch.cat(p) for p in zip(*parts, strict=True))
            with torch.no_grad():
                b1, b2 = self.BETAS
                m[rows] = b1 * m[rows] + (1 - b1) * grad
                v[rows] = b2 * v[rows] + (1 - b2) * grad * grad
                step[rows] += 1
                t = step[rows]
                # torch.optim.Adam's arithmetic (step size lr / bc1, denominator sqrt(v) / sqrt(bc2) + eps)
                size = (o.lr / (1 - b1**t)).to(x.dtype).to(x.device)
                denom = v[rows].sqrt() / (1 - b2**t).sqrt().to(x.dtype).to(x.device) + self.EPS
                x[rows] = x[rows] - size * m[rows] / denom
            still = []
            for k, r in enumerate(active):
                c, q, w = float(cosine[k]), float(norm[k]), float(yaw[k])
                last[r] = (c, q, w)
                pose_met = o.yaw is None or abs(o.yaw - abs(w)) <= 5
                if c >= o.min_cosine and o.quality - q <= 1 and pose_met:  # the published tolerances
                    met[r] += 1
                if met[r] < o.steps and int(step[r]) < o.max_iterations:
                    still.append(r)
            active = still
        records = [
            {
                "attrop_converged": float(met[r] >= o.steps),
                "attrop_iterations": float(step[r]),
                "attrop_cosine": last[r][0],
                "attrop_quality": last[r][1],
                "attrop_yaw": last[r][2],
            }
            for r in range(len(x))
        ]
        return x, records


class Vec2FaceGenerator:
    """Vec2Face as published (``BooBooWu/Vec2Face``): raw ArcFace features -> 112x112 faces."""

    Options = Vec2FaceOptions
    name = "vec2face"
    dim = 512
    uses_prompts = False
    input_scale: ClassVar[Literal["unit", "raw"]] = "raw"
    embedding_space: str | None = None  # Vec2Face's own ArcFace r100 (glint360k), not a filter embedder
    score_columns: tuple[str, ...] = ()

    @classmethod
    def image_size(cls, options: Vec2FaceOptions) -> int:
        return 112  # the published decoder's; a model folder's config.json may say otherwise

    @classmethod
    def check_weights(cls, options: Vec2FaceOptions) -> None:
        resolve_checkpoint(options.model, options.revision, VEC2FACE_LAYOUT, "generator.model")
        if options.attrop is not None:
            estimators_folder(options.model, options.attrop)

    def __init__(self, options: Vec2FaceOptions) -> None:
        self.options = options
        self.batch_size = options.batch_size
        self.device = pick_device(options.device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[options.dtype]
        self.folder = resolve_checkpoint(options.model, options.revision, VEC2FACE_LAYOUT, "generator.model")
        self.model = build_model(self.folder).to(self.device, self.dtype)
        if self.model.config.rep_dim != self.dim:
            raise FacesynthError(
                f"generator.model: Vec2Face takes 512-d features, the model {self.model.config.rep_dim}"
            )
        self.batch_invariant = (
            options.batch_invariant if options.batch_invariant is not None else self.device.type == "cpu"
        )
        self.ratio = mask_ratio_distribution(options)
        self.num_dropped = math.ceil(TOKENS * options.mask_ratio_min)
        self.attrop = AttrOP(self, options.attrop) if options.attrop is not None else None
        self.refines_identities = self.attrop is not None and options.attrop.apply_to == "identities"
        self.score_columns = ATTROP_COLUMNS if self.attrop is not None else ()
        self._scores: list[dict[str, float]] = []

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {
            "generator": self.name,
            "model": o.model,
            "model_path": str(self.folder),
            "revision": o.revision or snapshot_commit(self.folder),
            "architecture": self.model.config.model_dump(),
            "mask_ratio": {
                "min": o.mask_ratio_min,
                "max": o.mask_ratio_max,
                "mu": o.mask_ratio_mu,
                "std": o.mask_ratio_std,
            },
            "attrop": o.attrop.model_dump() if o.attrop else None,
            "dtype": o.dtype,
            "device": str(self.device),
            "batch_invariant": self.batch_invariant,
            "input_scale": self.input_scale,
        }

    def draws(self, seeds: Sequence[int], passes: int = 1) -> list[MaskDraws]:
        """Each seed's random streams, for up to ``passes`` forward passes of its image."""
        ratios = mask_ratios(self.ratio, seeds, passes)
        return [MaskDraws(seed, ratios[row], self.num_dropped) for row, seed in enumerate(seeds)]

    def forward(self, vectors: torch.Tensor, drop: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] for vectors [B, 512] and their (drop, masked) token masks [B, 49]."""
        drop, masked = drop.to(self.device), masked.to(self.device)
        x = vectors.to(self.device, self.dtype)
        if self.batch_invariant and len(x) > 1:  # the same kernels whatever the batch (see arc2face)
            rows = [self.model(x[i : i + 1], drop[i : i + 1], masked[i : i + 1]) for i in range(len(x))]
            return torch.cat(rows)
        return self.model(x, drop, masked)

    def refine_identities(
        self, vectors: np.ndarray, seeds: Sequence[int]
    ) -> tuple[np.ndarray, list[dict[str, float]]]:
        """AttrOP on identity centres (HSFace): refined raw vectors and each one's record."""
        assert self.attrop is not None
        array = check_vectors(vectors, seeds, self.dim, self.name)
        out, records = [], []
        for start in range(0, len(array), self.batch_size):
            x = torch.from_numpy(array[start : start + self.batch_size]).to(self.device)
            draws = self.draws(seeds[start : start + self.batch_size], self.attrop.options.max_iterations)
            refined, rec = self.attrop.run(x, x, draws)
            out.append(refined.cpu().numpy())
            records += rec
        return np.concatenate(out).astype(np.float32), records

    def generate(
        self, vectors: np.ndarray, seeds: Sequence[int], prompts: Sequence[str] | None = None
    ) -> list[Image.Image]:
        """One 112x112 image per (raw vector, seed); ``prompts`` are ignored.

        With ``attrop.apply_to: images`` each vector is first optimised (target: itself), and the
        image is the next forward pass of its seed's streams, as ``gen_image`` returns it.
        """
        array = check_vectors(vectors, seeds, self.dim, self.name)
        images: list[Image.Image] = []
        self._scores = [{} for _ in seeds]  # filled per image with attrop.apply_to: images
        per_image = self.attrop is not None and not self.refines_identities
        passes = 1 + (self.attrop.options.max_iterations if per_image else 0)  # AttrOP's, then the image's
        for start in range(0, len(array), self.batch_size):
            stop = start + self.batch_size
            x = torch.from_numpy(array[start:stop]).to(self.device)
            draws = self.draws(seeds[start:stop], passes)
            try:
                if per_image:
                    x, records = self.attrop.run(x, x, draws)
                    self._scores[start:stop] = records
                with torch.inference_mode():
                    out = self.forward(x, *next_masks(draws)[:2])
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                raise out_of_memory_error(self.name, self.batch_size, self.model.config.image_size) from None
            images += to_pil(out)
        return images

    def image_scores(self) -> list[dict[str, float]]:
        return self._scores


def mask_ratio_distribution(options: Vec2FaceOptions) -> Any:
    """The published mask-ratio law: a normal(mu, std) truncated to [min, max] (scipy's truncnorm)."""
    from scipy import stats

    mu, std = options.mask_ratio_mu, options.mask_ratio_std
    return stats.truncnorm(
        (options.mask_ratio_min - mu) / std, (options.mask_ratio_max - mu) / std, loc=mu, scale=std
    )


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> [B, 3, H, W] uint8, truncated as the published scripts do.

    Overwrites ``images`` when they are float32 (the model's fresh output): in place, the
    conversion is one pass cheaper. (x + 1) * 127.5 rounds exactly as (x + 1) / 2 * 255: halving is exact.
    """
    with torch.inference_mode():  # the model's output is an inference tensor: changed in place only here
        return images.float().add_(1).mul_(127.5).clamp_(0, 255).to(torch.uint8).cpu().numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """RGB images of [B, 3, H, W] model outputs. PIL interleaves the three planes itself (each plane
    is viewed, not copied): a third of the CPU time of a permuted copy and ``Image.fromarray`` of it."""
    return [Image.merge("RGB", [Image.fromarray(plane) for plane in planes]) for planes in to_uint8(images)]


if __name__ == "__main__":  # python -m facesynth.generators.vec2face FOLDER: one-time safetensors copy
    import sys

    print(convert_to_safetensors(Path(sys.argv[1])))
