"""Training input pipeline: images/s of ``facesynth train`` vs a bare PyTorch loop fed from memory.

Both sides train the same backbone, head, optimiser, batch and precision for the same number of
steps; the bare loop's batches are tensors already in memory, so ``ratio`` = facesynth / bare shows
whether reading parquet, decoding and augmenting in DataLoader workers ever starves the model
(target >= 0.9). Prints one JSON object.

    python benchmarks/train_input.py                          # r18 (width 32), batch 32, CPU
    python benchmarks/train_input.py --backbone r50 --width 64 --batch 128 --steps 50 --precision bf16
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facesynth import layout
from facesynth.recognition.train import METRICS, build_backbone, parse_train_recipe, train
from facesynth.schema import dataset_features
from facesynth.writer import ParquetShardWriter


def make_dataset(out: Path, identities: int, per_identity: int) -> Path:
    """Smooth random 112x112 JPEG faces-sized images (decode cost like real crops), labels 0..K-1."""
    rng = np.random.default_rng(0)
    with ParquetShardWriter(out / layout.shard_name(0, 1), dataset_features([]), 8 << 20) as writer:
        for label in range(identities):
            for attempt in range(per_identity):
                small = rng.integers(0, 255, (14, 14, 3), dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(small).resize((112, 112), Image.BICUBIC).save(buf, "JPEG", quality=90)
                writer.write(
                    {
                        "image": {"bytes": buf.getvalue(), "path": f"{label}_{attempt}.jpg"},
                        "label": label,
                        "identity": label,
                        "attempt": attempt,
                        "seed": attempt,
                        "prompt": None,
                        "variation_cosine": None,
                    }
                )
    return out


def bare_loop(recipe, num_classes: int, steps: int, warmup: int) -> float:
    """Images/s of the same model, head and optimiser on in-memory tensors (after ``warmup`` steps)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = build_backbone(recipe.model).to(device).train()
    head = recipe.head.build(recipe.model.embedding_size, num_classes).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.SGD(params, lr=recipe.optim.lr, momentum=recipe.optim.momentum, weight_decay=5e-4)
    batch = recipe.data.batch_size
    x = torch.randn(batch, 3, 112, 112, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.precision)
    for i in range(warmup + steps):
        if i == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = head(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # facesynth reads the loss every log step; sync the same way
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="r18")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (a multiple of --warmup)")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--identities", type=int, default=40)
    args = parser.parse_args()

    recipe_text = json.dumps(
        {
            "model": {"backbone": args.backbone, "width": args.width},
            "head": {"name": "arcface"},
            "data": {"batch_size": args.batch, "num_workers": args.workers},
            "schedule": {"epochs": 1000, "max_steps": args.warmup + args.steps},
            "precision": args.precision,
            # a log row (with images/s since the previous one) every `warmup` steps; the first is dropped
            "log_every": args.warmup,
            "checkpoint_every": 10**9,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        per_identity = max(8, (args.batch * (args.warmup + args.steps)) // args.identities + 1)
        data = make_dataset(Path(tmp) / "data", args.identities, per_identity)
        recipe = parse_train_recipe(recipe_text, "<benchmark>")
        train(data, recipe, Path(tmp) / "run", progress=False)
        rows = (Path(tmp) / "run" / METRICS).read_text().splitlines()
        header = rows[0].split(",")
        timed = [dict(zip(header, r.split(","), strict=True)) for r in rows[2:]]
        # Rows after the first cover equal step counts: the overall rate is their harmonic mean.
        images = len(timed) / sum(1 / float(r["images_per_s"]) for r in timed)
        bare = bare_loop(recipe, args.identities, args.steps, args.warmup)
    print(
        json.dumps(
            {
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "backbone": args.backbone,
                "width": args.width,
                "batch": args.batch,
                "precision": args.precision,
                "workers": args.workers,
                "steps": args.steps,
                "facesynth_train_img_s": round(images, 2),
                "bare_loop_img_s": round(bare, 2),
                "ratio": round(images / bare, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
