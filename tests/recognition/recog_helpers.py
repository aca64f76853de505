"""Small face datasets with real structure for training tests: identities are real LFW faces (skimage)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from facesynth import layout
from facesynth.schema import dataset_features
from facesynth.writer import ParquetShardWriter


def identity_faces() -> np.ndarray:
    """The 100 real 25x25 grey LFW faces of ``skimage.data.lfw_subset`` as uint8."""
    from skimage.data import lfw_subset

    return (lfw_subset()[:100] * 255).round().astype(np.uint8)


def face_view(face: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One 112x112 RGB view of a face: random scale, rotation, shift, contrast, brightness and noise."""
    img = Image.fromarray(face).resize((112, 112), Image.BICUBIC).convert("RGB")
    scale = rng.uniform(0.9, 1.1)
    img = img.rotate(rng.uniform(-10, 10), resample=Image.BILINEAR, translate=tuple(rng.integers(-6, 7, 2)))
    size = int(112 * scale)
    img = img.resize((size, size), Image.BILINEAR)
    canvas = Image.new("RGB", (112, 112))
    canvas.paste(img, ((112 - size) // 2, (112 - size) // 2))
    arr = np.asarray(canvas, dtype=np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
    arr += rng.normal(0, 6, arr.shape)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def encode(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_face_dataset(
    out: Path, faces: np.ndarray, per_identity: int, seed: int = 0, row_group_bytes: int = 64 << 20
) -> Path:
    """A facesynth-layout parquet dataset (data/ shard + stats.json): label k = faces[k]."""
    rng = np.random.default_rng(seed)
    features = dataset_features([])
    with ParquetShardWriter(Path(out) / layout.shard_name(0, 1), features, row_group_bytes) as writer:
        for label, face in enumerate(faces):
            for attempt in range(per_identity):
                writer.write(
                    {
                        "image": {
                            "bytes": encode(face_view(face, rng)),
                            "path": f"{label:07d}_{attempt:04d}.jpg",
                        },
                        "label": label,
                        "identity": label,
                        "attempt": attempt,
                        "seed": attempt,
                        "prompt": None,
                        "variation_cosine": None,
                    }
                )
    layout.atomic_write_json(Path(out) / layout.STATS, {"recipe_hash": f"test-{seed}", "bank_sha256": None})
    return Path(out)
