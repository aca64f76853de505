"""A test-only generator that returns real photographs, so `facesynth run` can be tested with face filters.

No generator of the project makes faces in tests (the tiny one's random weights make noise), so this
one picks a real face (skimage's LFW subset) from the identity vector and varies it by the seed:
mostly its own face, lightly changed (brightness, flip, shift), sometimes another identity's face
or a blank image, so every face filter has something to reject. Image ``i`` depends only on
``vectors[i]`` and ``seeds[i]``, like every generator. Register it with ``register()``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache

import cv2
import numpy as np
from PIL import Image

from facesynth.registry import StrictOptions

NAME = "face-images"
# The dlib filter stack whose decisions depend on the identity's other images and on what was accepted
# before (face, identity, duplicates, separation): what the batch-invariance tests of `facesynth run`
# and `facesynth filter` run.
STATEFUL_FILTERS = """\
filters:
  - name: face
    detector: {name: dlib, cnn_fallback: false}
  - name: identity
    embedder: dlib
  - name: duplicates
    embedder: dlib
  - name: separation
    embedder: dlib
"""


@cache
def _faces(size: int) -> tuple[np.ndarray, ...]:
    from skimage.data import lfw_subset

    faces = lfw_subset()[:100]
    return tuple(
        cv2.resize((f * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_CUBIC) for f in faces
    )


class FaceImagesGenerator:
    name = NAME
    dim = 512
    input_scale = "unit"
    score_columns: tuple[str, ...] = ()
    embedding_space = None  # pictures chosen by the vector, in no embedder's space

    class Options(StrictOptions):
        size: int = 128
        batch_size: int = 4
        device: str = "cpu"

    @classmethod
    def image_size(cls, options: Options) -> int:
        return options.size

    @classmethod
    def check_weights(cls, options: Options) -> None:
        """No weights: the pictures are skimage's."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.batch_size = options.batch_size

    def describe(self) -> dict[str, object]:
        return {"generator": self.name, "size": self.options.size, "device": "cpu", "dtype": "uint8"}

    def image(self, vector: np.ndarray, seed: int) -> Image.Image:
        faces = _faces(self.options.size)
        own = int.from_bytes(hashlib.sha256(np.ascontiguousarray(vector).tobytes()).digest()[:4], "little")
        rng = np.random.default_rng(seed)
        draw = rng.random()
        if draw < 0.1:
            grey = np.full((self.options.size,) * 2, 128, np.uint8)  # no face
        elif draw < 0.25:
            grey = faces[(own + 1 + int(rng.integers(len(faces) - 1))) % len(faces)]  # someone else
        else:
            grey = faces[own % len(faces)]
        grey = np.clip(grey.astype(np.float32) * rng.uniform(0.75, 1.25), 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            grey = np.ascontiguousarray(grey[:, ::-1])
        grey = np.roll(grey, tuple(int(s) for s in rng.integers(-4, 5, size=2)), axis=(0, 1))
        return Image.fromarray(grey).convert("RGB")

    def generate(
        self, vectors: np.ndarray, seeds: Sequence[int], prompts: Sequence[str] | None = None
    ) -> list[Image.Image]:
        return [self.image(v, s) for v, s in zip(vectors, seeds, strict=True)]

    def image_scores(self) -> list[dict[str, float]]:
        return []  # no score_columns


def register() -> None:
    from facesynth.generators import GENERATORS

    GENERATORS.register(NAME, FaceImagesGenerator)
