"""Throughput of the full filter stack with the offline dlib models on CPU; prints JSON.

Reports images/s and the share of filter time spent outside model inference (HOG/CNN detection,
landmarks and the ResNet embedder are "inference"; conversions, alignment, chips, quality
measures and bookkeeping are "outside"). Target: outside <= 10%.

    python benchmarks/filters.py [--images 48]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import cv2
import numpy as np
from PIL import Image
from skimage.data import astronaut, lfw_subset

from facesynth.filters import load_filter
from facesynth.interfaces import Candidate, FilterContext

INFERENCE = {"seconds": 0.0}


class Timed:
    """Forwards to a dlib model and adds the time spent in it to INFERENCE."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def _timed(self, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            INFERENCE["seconds"] += time.perf_counter() - start

    def __call__(self, *args: Any) -> Any:
        return self._timed(self.model, *args)

    def run(self, *args: Any) -> Any:
        return self._timed(self.model.run, *args)

    def compute_face_descriptor(self, *args: Any) -> Any:
        return self._timed(self.model.compute_face_descriptor, *args)


def images(count: int) -> list[tuple[int, np.ndarray]]:
    """(identity, 512 px RGB image): astronaut variants as identity 0, LFW faces as identities 1.."""
    a = astronaut()
    rng = np.random.default_rng(0)
    out = []
    faces = lfw_subset()[:100]
    for i in range(count):
        if i % 3 == 0:
            gain = rng.uniform(0.8, 1.2)
            img = np.clip(a * gain, 0, 255).astype(np.uint8)
            out.append((0, img[:, ::-1].copy() if i % 2 else img))
        else:
            grey = cv2.resize(
                (faces[i % 100] * 255).astype(np.uint8), (512, 512), interpolation=cv2.INTER_CUBIC
            )
            out.append((1 + i % 100, np.repeat(grey[:, :, None], 3, axis=2)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    filters = [
        load_filter("face"),
        load_filter("identity"),
        load_filter("separation"),
        load_filter("duplicates"),
        load_filter("quality"),
    ]
    detector, embedder = filters[0].detector, filters[1].embedder
    for owner, attr in [
        (detector, "hog"),
        (detector, "cnn"),
        (detector, "shape"),
        (embedder, "shape"),
        (embedder, "net"),
    ]:
        if getattr(owner, attr, None) is not None:
            setattr(owner, attr, Timed(getattr(owner, attr)))
    data = images(args.images)
    context = FilterContext(bank_vectors=np.zeros((101, 4), np.float32), unit_identities=list(range(101)))
    pil = [(identity, Image.fromarray(img)) for identity, img in data]
    load_filter("face").check(data[0][1])  # warm-up
    INFERENCE["seconds"] = 0.0
    start = time.perf_counter()
    accepted = 0
    for b in range(0, len(pil), args.batch):
        batch = [
            Candidate(
                identity=identity, attempt=b + j, seed=b + j, vector=np.zeros(4, np.float32), image=image
            )
            for j, (identity, image) in enumerate(pil[b : b + args.batch])
        ]
        for f in filters:
            f(batch, context)
        for c in batch:
            if c.accepted:
                accepted += 1
                for name, vector in c.embeddings.items():
                    context.accepted_embeddings.setdefault(name, {}).setdefault(c.identity, []).append(vector)
    total = time.perf_counter() - start
    outside = total - INFERENCE["seconds"]
    print(
        json.dumps(
            {
                "benchmark": "filters",
                "stack": [f.name for f in filters],
                "images": len(pil),
                "image_size": 512,
                "accepted": accepted,
                "seconds": round(total, 3),
                "images_per_second": round(len(pil) / total, 2),
                "inference_seconds": round(INFERENCE["seconds"], 3),
                "outside_inference_share": round(outside / total, 4),
                "target_outside_share": 0.10,
            }
        )
    )


if __name__ == "__main__":
    main()
