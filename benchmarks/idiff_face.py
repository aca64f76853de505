"""IDiff-Face at the published UNet size (216,341,187 parameters) with random weights, on CPU.

(a) Images per second of a whole ``facesynth run`` (filters off, model already loaded: units,
    encoding, writing, finalize; ``batch_invariant: false``, what CUDA runs use) against a bare loop
    over the same UNet and decoder modules: batch noise, the same DDIM steps, decode, PIL images.
    Rounds alternate between the two. Target: ratio_run >= 0.95.
(b) DDIM 50 vs DDPM 1000 seconds per image, ESTIMATED from timed steps (a 1000-step DDPM image takes
    tens of minutes on this CPU): per-step time of each sampler's loop (DDIM: the slope between
    ``steps_low`` and ``steps_high`` steps; DDPM: a whole run of the same weights saved with T = 8,
    less the decode), then steps x per-step time + one decode.
Prints one JSON object.

    python benchmarks/idiff_face.py [--images 2] [--batch 2] [--steps 2] [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def bare_images_per_s(generator, images: int, batch: int, steps: int) -> float:
    """A user's loop over the same modules: batch noise, DDIM (eta 0), decode, PIL."""
    from PIL import Image

    unet, decoder = generator.unet, generator.decoder
    alpha_bars = generator.schedule["alpha_bars"]
    T = len(alpha_bars)
    timesteps = list(range(0, T, T // steps))[::-1]
    vectors = torch.from_numpy(np.random.default_rng(0).normal(size=(images, 512)).astype(np.float32))
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, images, batch):
            c = unet.project(vectors[first : first + batch])
            x = torch.randn((len(c), *generator.latent_shape), generator=torch.Generator().manual_seed(first))
            for k, t in enumerate(timesteps):
                ab = alpha_bars[t]
                ab_prev = alpha_bars[timesteps[k + 1]] if k + 1 < len(timesteps) else torch.tensor(1.0)
                eps = unet(x, torch.full((len(x),), t), c)
                x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
                x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
            out = ((decoder(x).clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8)
            _ = [Image.fromarray(a) for a in out.permute(0, 2, 3, 1).numpy()]
    return images / (time.perf_counter() - start)


def run_images_per_s(root: Path, images: int, batch: int, steps: int) -> float:
    from facesynth.finalize import finalize
    from facesynth.prepare import prepare
    from facesynth.recipe import load_recipe
    from facesynth.runner import load_worker, run_units

    recipe = {
        "name": "idiff-bench",
        "seed": 0,
        "output": {"image_format": "jpeg"},
        "identities": {"count": images, "sampler": "sphere", "max_cosine": 1.0},
        "generator": {
            "name": "idiff-face",
            "model": str(root),
            "sampler": "ddim",
            "steps": steps,
            "batch_size": batch,
            "batch_invariant": False,
        },
        "variations": {"images_per_identity": 1},
        "filters": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        out = Path(tmp) / "out"
        run = prepare(load_recipe(path), out, progress=False)
        load_worker(out)  # the model loads outside the timing, as for the bare loop
        start = time.perf_counter()
        run_units(out, range(run["num_units"]), progress=False)
        stats = finalize(out)
        return stats["images_generated"] / (time.perf_counter() - start)


def seconds(function) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps-low", type=int, default=2)
    parser.add_argument("--steps-high", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from facesynth.generators import load_generator
    from facesynth.generators.idiff_face import write_random_checkpoint

    root = Path(tempfile.mkdtemp(prefix="facesynth-idiff-bench-"))
    write_random_checkpoint(root)  # the published UNet and decoder sizes, T = 1000
    write_random_checkpoint(root, T=8, checkpoint="same-weights-t8")  # same seed: same weights

    generator = load_generator(
        "idiff-face", model=str(root), sampler="ddim", steps=args.steps, batch_invariant=False
    )
    samples: dict[str, list[float]] = {"bare": [], "run": []}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        timings = {
            "bare": bare_images_per_s(generator, args.images, args.batch, args.steps),
            "run": run_images_per_s(root, args.images, args.batch, args.steps),
        }
        if round_:
            for key, value in timings.items():
                samples[key].append(value)
    bare, run = (statistics.median(samples[k]) for k in ("bare", "run"))

    # (b) one image, batch of one
    vector, seed = np.random.default_rng(1).normal(size=(1, 512)).astype(np.float32), [0]
    low = load_generator("idiff-face", model=str(root), sampler="ddim", steps=args.steps_low)
    high = load_generator("idiff-face", model=str(root), sampler="ddim", steps=args.steps_high)
    ddpm8 = load_generator("idiff-face", model=str(root), checkpoint="same-weights-t8")
    latents = low.sample(vector, seed)
    decode = seconds(lambda: low.decode(latents))
    ddim_step = (seconds(lambda: high.sample(vector, seed)) - seconds(lambda: low.sample(vector, seed))) / (
        args.steps_high - args.steps_low
    )
    ddpm_step = seconds(lambda: ddpm8.sample(vector, seed)) / 8
    ddim50, ddpm1000 = 50 * ddim_step + decode, 1000 * ddpm_step + decode
    report = {
        "device": "cpu",
        "threads": args.threads,
        "unet_parameters": sum(p.numel() for p in generator.unet.parameters()),
        "a": {
            "images": args.images,
            "batch": args.batch,
            "ddim_steps": args.steps,
            "rounds": args.rounds,
            "bare_loop_images_per_s": round(bare, 4),
            "facesynth_run_images_per_s": round(run, 4),
            "ratio_run": round(run / bare, 3),
            "samples": {k: [round(v, 4) for v in values] for k, values in samples.items()},
        },
        "b_estimated": {
            "decode_s": round(decode, 2),
            "ddim_step_s": round(ddim_step, 3),
            "ddpm_step_s": round(ddpm_step, 3),
            "ddim50_s_per_image": round(ddim50, 1),
            "ddpm1000_s_per_image": round(ddpm1000, 1),
            "speedup": round(ddpm1000 / ddim50, 1),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
