"""Images per second of facesynth's generator against a bare diffusers call, in the same run.

Both sides use the same tiny checkpoints (``facesynth.generators.tiny``) on CPU, the same
components, scheduler (DPM++), steps, guidance, size and batch. The bare side is one
``StableDiffusionPipeline(...)(prompt=..., latents=...)`` call per batch, as a user would write
it. facesynth is timed twice: with its CPU default ``batch_invariant: true`` (UNet and VAE run one
image at a time so an image never depends on its batch) and with ``batch_invariant: false``
(what CUDA runs use). Rounds alternate between the sides so machine load hits all of them.
A whole ``facesynth run`` (filters off, model already loaded: units, encoding, writing, finalize)
is timed in the same rounds. Prints one JSON object. Target: ratio_run >= 0.95.

    python benchmarks/generation.py [--sizes 64 112] [--images 32] [--batch 16] [--threads 1]
    python benchmarks/generation.py --vec2face [--images 16] [--batch 8]

With ``--vec2face`` it times Vec2Face instead (see ``vec2face_main``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"


def bare_pipeline(model: Path, base: Path):
    """The same components, loaded with nothing but diffusers and transformers."""
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    scheduler_config = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(base, subfolder="vae"),
        text_encoder=CLIPTextModel.from_pretrained(model, subfolder="encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(model, subfolder="arc2face"),
        scheduler=DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="dpmsolver++"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def time_bare(pipe, images: int, batch: int, size: int, steps: int, guidance: float) -> float:
    start = time.perf_counter()
    for first in range(0, images, batch):
        n = min(batch, images - first)
        latents = torch.randn(
            (n, 4, size // 8, size // 8), generator=torch.Generator("cpu").manual_seed(first)
        )
        pipe(
            prompt=["photo of a id person"] * n,
            latents=latents,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            output_type="pil",
        )
    return images / (time.perf_counter() - start)


def time_facesynth(generator, images: int) -> float:
    vectors = np.random.default_rng(0).normal(size=(images, 512)).astype(np.float32)
    start = time.perf_counter()
    generator.generate(vectors, list(range(images)))
    return images / (time.perf_counter() - start)


def time_run(size: int, steps: int, guidance: float, batch: int, images: int, batch_invariant: bool) -> float:
    """Images/s of a whole ``facesynth run`` (filters off) once the model is loaded: units + finalize."""
    from facesynth.finalize import finalize
    from facesynth.prepare import prepare
    from facesynth.recipe import load_recipe
    from facesynth.runner import load_worker, run_units

    per_identity = 4
    overrides = [
        f"generator.size={size}",
        f"generator.steps={steps}",
        f"generator.guidance={guidance}",
        f"generator.batch_size={batch}",
        f"generator.batch_invariant={str(batch_invariant).lower()}",
        f"identities.count={max(1, images // per_identity)}",
        f"variations.images_per_identity={per_identity}",
        f"variations.min_images_per_identity={per_identity}",
        "filters=[]",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        run = prepare(load_recipe(RECIPE, overrides), out, progress=False)
        load_worker(out)
        start = time.perf_counter()
        run_units(out, range(run["num_units"]), progress=False)
        stats = finalize(out)
        return stats["images_generated"] / (time.perf_counter() - start)


def vec2face_recipe(folder: Path, centres: Path, out: Path, images: int, batch: int) -> Path:
    """The HSFace recipe, small: 4 images per identity, no AttrOP, filters off, random weights."""
    import yaml

    data = yaml.safe_load((RECIPE.parent / "vec2face-hsface10k.yaml").read_text())
    data["output"]["dir"] = str(out)
    data["identities"].update(count=max(1, images // 4), gallery=None)
    data["identities"]["sampler"].update(reference=str(centres), components=16)
    data["generator"].update(model=str(folder), batch_size=batch, device="cpu", batch_invariant=False)
    data["generator"].pop("attrop")
    data["variations"].update(images_per_identity=4, min_images_per_identity=4, max_attempts_per_identity=4)
    data["filters"] = []
    path = out.parent / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def time_vec2face_run(recipe: Path) -> tuple[float, float]:
    """(images/s of a whole ``facesynth run`` once the model is loaded, seconds spent in the model)."""
    from facesynth.finalize import finalize
    from facesynth.prepare import prepare
    from facesynth.recipe import load_recipe
    from facesynth.runner import load_worker, run_units

    out = Path(load_recipe(recipe).output.dir)
    shutil.rmtree(out, ignore_errors=True)
    run = prepare(load_recipe(recipe), out, progress=False)
    worker = load_worker(out)
    generate = worker.generator.generate
    model_seconds = 0.0

    def timed(*args, **kwargs):
        nonlocal model_seconds
        t0 = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            model_seconds += time.perf_counter() - t0

    worker.generator.generate = timed
    try:
        start = time.perf_counter()
        run_units(out, range(run["num_units"]), progress=False)
        stats = finalize(out)
        return stats["images_generated"] / (time.perf_counter() - start), model_seconds
    finally:
        worker.generator.generate = generate


def time_vec2face_bare(model, images: int, batch: int) -> float:
    """A bare loop of the same model and batch: random masks, forward, uint8, PIL."""
    from PIL import Image

    from facesynth.generators.vec2face import TOKENS

    vectors = torch.from_numpy(np.random.default_rng(0).normal(0, 1.1, (images, 512)).astype(np.float32))
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, images, batch):
            x = vectors[first : first + batch]
            noise = torch.rand(len(x), TOKENS)
            order = noise.argsort(dim=1)
            drop = torch.zeros_like(noise, dtype=torch.bool).scatter_(1, order[:, :5], True)
            masked = torch.zeros_like(noise, dtype=torch.bool).scatter_(1, order[:, :12], True)
            out = model(x, drop, masked)
            pixels = ((out + 1) / 2 * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            [Image.fromarray(a) for a in pixels]
    return images / (time.perf_counter() - start)


def vec2face_main(args: argparse.Namespace) -> None:
    """Vec2Face at the published size (random weights) and at the tiny size, CPU.

    ratio_run = facesynth run (filters off) / bare loop of the same model and batch (target >= 0.95).
    overhead_ms_per_image = main-thread time of the run outside the model, per image (sampling the
    bank is before the timed part; variations, mask draws, encoding, writing and finalize are in it).
    """
    from facesynth.generators.vec2face import TINY_CONFIG, Vec2FaceConfig, build_model, build_random_vec2face

    tmp = Path(tempfile.mkdtemp(prefix="facesynth-bench-v2f-"))
    centres = tmp / "centres.npy"
    np.save(centres, np.random.default_rng(0).normal(0, 1.1, (256, 512)).astype(np.float32))
    results = []
    for label, config in (("published", Vec2FaceConfig()), ("tiny", TINY_CONFIG)):
        folder = tmp / label
        build_random_vec2face(folder, config)
        model = build_model(folder)
        recipe = vec2face_recipe(folder, centres, tmp / f"out-{label}", args.images, args.batch)
        samples: dict[str, list[float]] = {"bare": [], "run": [], "overhead": []}
        for round_ in range(args.rounds + 1):  # round 0 warms up
            bare = time_vec2face_bare(model, args.images, args.batch)
            run, model_seconds = time_vec2face_run(recipe)
            if round_:
                samples["bare"].append(bare)
                samples["run"].append(run)
                n = max(1, args.images // 4) * 4
                samples["overhead"].append((n / run - model_seconds) / n * 1000)
        best = {key: statistics.median(values) for key, values in samples.items()}
        results.append(
            {
                "model": label,
                "bare_images_per_s": round(best["bare"], 2),
                "facesynth_run_images_per_s": round(best["run"], 2),
                "ratio_run": round(best["run"] / best["bare"], 3),
                "overhead_ms_per_image": round(best["overhead"], 3),
            }
        )
        shutil.rmtree(folder)
    print(
        json.dumps(
            {
                "device": "cpu",
                "threads": args.threads,
                "batch": args.batch,
                "images": args.images,
                "rounds": args.rounds,
                "size": 112,
                "results": results,
                "target": "ratio_run >= 0.95 (published size); overhead <= 0.5 ms/image",
            },
            indent=2,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vec2face", action="store_true", help="time Vec2Face (published size + tiny)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 112])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.vec2face:
        vec2face_main(args)
        return

    from facesynth.generators import load_generator
    from facesynth.generators.tiny import build_tiny_checkpoints

    cache = tempfile.mkdtemp(prefix="facesynth-bench-")
    os.environ["FACESYNTH_CACHE"] = cache  # facesynth.run builds tiny here too
    model, base = build_tiny_checkpoints(cache)
    start = time.perf_counter()
    load_generator("tiny", cache_dir=cache)
    load_seconds = time.perf_counter() - start

    results = []
    for size in args.sizes:
        common = {"size": size, "steps": args.steps, "guidance": args.guidance, "batch_size": args.batch}
        exact = load_generator("tiny", cache_dir=cache, batch_invariant=True, **common)
        fast = load_generator("tiny", cache_dir=cache, batch_invariant=False, **common)
        pipe = bare_pipeline(model, base)
        samples: dict[str, list[float]] = {"bare": [], "exact": [], "fast": [], "run": []}
        for round_ in range(args.rounds + 1):  # round 0 warms up oneDNN's kernel caches
            timings = {
                "bare": time_bare(pipe, args.images, args.batch, size, args.steps, args.guidance),
                "exact": time_facesynth(exact, args.images),
                "fast": time_facesynth(fast, args.images),
                "run": time_run(
                    size, args.steps, args.guidance, args.batch, args.images, batch_invariant=False
                ),
            }
            if round_:
                for key, value in timings.items():
                    samples[key].append(value)
        best = {key: statistics.median(values) for key, values in samples.items()}
        results.append(
            {
                "size": size,
                "images": args.images,
                "bare_diffusers_images_per_s": round(best["bare"], 2),
                "facesynth_images_per_s": round(best["fast"], 2),
                "ratio": round(best["fast"] / best["bare"], 3),
                "facesynth_batch_invariant_images_per_s": round(best["exact"], 2),
                "ratio_batch_invariant": round(best["exact"] / best["bare"], 3),
                "s_per_image_batch_invariant": round(1 / best["exact"], 4),
                "facesynth_run_images_per_s": round(best["run"], 2),
                "ratio_run": round(best["run"] / best["bare"], 3),
            }
        )
    report = {
        "device": "cpu",
        "threads": args.threads,
        "batch": args.batch,
        "steps": args.steps,
        "guidance": args.guidance,
        "rounds": args.rounds,
        "tiny_load_seconds": round(load_seconds, 3),
        "results": results,
        "target": "ratio_run >= 0.95 (facesynth run, filters off, vs bare diffusers)",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
