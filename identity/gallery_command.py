"""``facesynth gallery``: embed real people's photos into a gallery file that records its embedding space.

One vector per identity folder (the normalised mean of its faces, as the ``images`` sampler makes
it), written as .safetensors with the embedder's ``Embedder.space``: the bank's gallery exclusion and
the ``leakage`` filter refuse the file when they embed in another space.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from facesynth.errors import UserInputError
from facesynth.faces.gallery import save_gallery
from facesynth.identity.samplers import ImagesSampler


def make_gallery(
    root: str | Path, embedder: str | dict[str, Any], out: str | Path, max_images: int | None = None
) -> tuple[Path, int, str]:
    """Embed ``root`` (one subfolder per identity) into ``out``; returns (path, identities, space)."""
    options = ImagesSampler.Options(root=Path(root), embedder=embedder, max_images_per_identity=max_images)
    sampler = ImagesSampler(options)
    space = sampler.embedder.space
    return save_gallery(out, sampler.vectors, space), len(sampler.vectors), space


def cmd_gallery(args: argparse.Namespace) -> int:
    embedder = yaml.safe_load(args.embedder)
    if not isinstance(embedder, str | dict):
        raise UserInputError(
            f"--embedder: give a name or a mapping like '{{name: dlib}}', got {args.embedder!r}"
        )
    path, count, space = make_gallery(args.root, embedder, args.out, args.max_images)
    print(f"wrote {count:,} identities to {path} (space {space})")
    return 0
