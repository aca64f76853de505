"""The tiny IDiff-Face used by the tests and by the reference fixture (same sizes in both places)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facesynth.generators.idiff_face import write_random_checkpoint

# Published layout and code path, tiny sizes: 8x8 latents -> 32 px images, T = 25 (betas scale 1000/T:
# T = 20 would give beta_T = 1 and a singular schedule, in the published code too).
TINY_UNET = {
    "initial_channels": 32,
    "channel_multipliers": [1, 2],
    "is_attention": [False, True],
    "n_blocks_per_resolution": 1,
    "context_channels": 64,
}
TINY_FIRST_STAGE = {
    "embed_dim": 3,
    "n_embed": 8192,  # the published decoder wrapper hard-codes 3 x 8192
    "ddconfig": {
        "double_z": False,
        "z_channels": 3,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2, 4],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    },
}
TINY_T = 25
TINY_IMAGE_SIZE = 32


def write_tiny(root: Path, *, learn_empty_context: bool = False, seed: int = 0) -> Path:
    unet = {**TINY_UNET, "learn_empty_context": learn_empty_context}
    return write_random_checkpoint(
        root, unet, TINY_FIRST_STAGE, T=TINY_T, image_size=TINY_IMAGE_SIZE, seed=seed
    )


def unit_vectors(count: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(count, 512)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
