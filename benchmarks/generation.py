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
from typing import Any

import numpy as np
import torch
from processes import run_processes

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


def vec2face_recipe(
    folder: Path, centres: Path, out: Path, images: int, batch: int, encode_processes: int = 0, **output: Any
) -> Path:
    """The HSFace recipe, small: 4 images per identity, no AttrOP, filters off, random weights."""
    import yaml

    data = yaml.safe_load((RECIPE.parent / "vec2face-hsface10k.yaml").read_text())
    data["output"].update(dir=str(out), **output)
    data.setdefault("writer", {})["encode_processes"] = encode_processes
    data["identities"].update(count=max(1, images // 4), gallery=None)
    data["identities"]["sampler"].update(reference=str(centres), components=256)
    data["generator"].update(model=str(folder), batch_size=batch, device="cpu", batch_invariant=False)
    data["generator"].pop("attrop")
    data["variations"].update(images_per_identity=4, min_images_per_identity=4, max_attempts_per_identity=4)
    data["filters"] = []
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def prepared_worker(recipe: Path) -> tuple[Path, Any]:
    """A fresh output folder for ``recipe`` (bank drawn, units planned) and its loaded worker."""
    from facesynth.prepare import prepare
    from facesynth.recipe import load_recipe
    from facesynth.runner import load_worker

    out = Path(load_recipe(recipe).output.dir)
    shutil.rmtree(out, ignore_errors=True)
    prepare(load_recipe(recipe), out, progress=False)
    return out, load_worker(out)


class Stopwatch:
    """Wraps ``module.forward`` and adds up the wall and CPU seconds spent in it (the model's share)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.forward, self.seconds, self.cpu_seconds = module, module.forward, 0.0, 0.0

        def timed(*args: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return self.forward(*args)
            finally:
                self.seconds += time.perf_counter() - t0
                self.cpu_seconds += time.thread_time() - c0

        module.forward = timed

    def close(self) -> None:
        del self.module.forward  # the class's forward again


def time_vec2face_run(out: Path, units: list[int] | None = None) -> dict[str, Any]:
    """A whole ``facesynth run`` of a prepared folder once the model is loaded (units, then finalize).

    Returns images, wall seconds of the units and of finalize, seconds in the model's ``forward``,
    in ``generate`` and in the filter thread's encoding (from the units' done-markers), and the
    batches ``generate`` was called with (vectors, seeds), so a bare loop can repeat them. With
    ``units``, only those units and no finalize (one of several worker processes).
    """
    from facesynth import layout
    from facesynth.finalize import finalize
    from facesynth.runner import load_worker, run_units

    worker = load_worker(out)
    generator = worker.generator
    units = list(units if units is not None else range(worker.plan.num_units))
    batches: list[tuple[np.ndarray, list[int]]] = []
    generate = generator.generate
    generate_seconds = 0.0

    def recorded(vectors: np.ndarray, seeds: Any, prompts: Any = None) -> Any:
        nonlocal generate_seconds
        batches.append((np.array(vectors), list(seeds)))
        t0 = time.perf_counter()
        try:
            return generate(vectors, seeds, prompts)
        finally:
            generate_seconds += time.perf_counter() - t0

    generator.generate = recorded
    watch = Stopwatch(generator.model)
    try:
        start, cpu, process = time.perf_counter(), time.thread_time(), time.process_time()
        run_units(out, units, progress=False)
        middle, cpu = time.perf_counter(), time.thread_time() - cpu
        markers = [layout.read_json(layout.unit_done_marker(out, u)) for u in units]
        finalize_cpu = time.thread_time()
        stats = finalize(out) if len(units) == worker.plan.num_units else None
        end = time.perf_counter() if stats is not None else middle
        finalize_cpu, process = time.thread_time() - finalize_cpu, time.process_time() - process
    finally:
        watch.close()
        del generator.generate
    return {
        "images": sum(len(s) for _, s in batches),
        "units_seconds": middle - start,
        "finalize_seconds": end - middle,
        "model_seconds": watch.seconds,
        "units_cpu_seconds": cpu,  # of this (the main) thread: what other programs' load does not inflate
        "finalize_cpu_seconds": finalize_cpu,
        "process_cpu_seconds": process,  # all threads (filter / encoder, writer), units and finalize
        "model_cpu_seconds": watch.cpu_seconds,
        "generate_seconds": generate_seconds,
        "encode_seconds": sum(m["timings"]["encode"] for m in markers),
        "batches": batches,
    }


def bare_masks(generator: Any, batches: list[tuple[np.ndarray, list[int]]]) -> list[tuple]:
    """Each batch's model inputs exactly as facesynth makes them: vectors, drop and masked masks."""
    from facesynth.generators.vec2face import next_masks

    inputs = []
    for vectors, seeds in batches:
        drop, masked, _ = next_masks(generator.draws(seeds))
        inputs.append((torch.from_numpy(vectors), drop, masked))
    return inputs


def time_vec2face_bare(model: torch.nn.Module, inputs: list[tuple]) -> tuple[dict[str, float], list]:
    """Wall, thread and process CPU seconds of a bare loop over facesynth's model calls: forward,
    uint8 as published, PIL; and the first batch's pixels, to check both sides did the same work.

    The masks are drawn before the clock starts, so facesynth's per-image draws count as its own
    overhead.
    """
    from PIL import Image

    first = []
    start, cpu, process = time.perf_counter(), time.thread_time(), time.process_time()
    with torch.inference_mode():
        for x, drop, masked in inputs:
            out = model(x, drop, masked)
            pixels = ((out + 1) / 2 * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            images = [Image.fromarray(a) for a in pixels]
            first = first or [np.asarray(im) for im in images]
    seconds = {
        "wall": time.perf_counter() - start,
        "cpu": time.thread_time() - cpu,
        "process": time.process_time() - process,
    }
    return seconds, first


def vec2face_ratio(label: str, config: Any, tmp: Path, centres: Path, args: argparse.Namespace) -> dict:
    """ratio_run: a whole ``facesynth run`` vs a bare loop over the very same model calls, alternating."""
    from facesynth.generators.vec2face import build_random_vec2face

    folder = tmp / label
    build_random_vec2face(folder, config)
    recipe = vec2face_recipe(folder, centres, tmp / f"out-{label}", args.images, args.batch)
    samples: dict[str, list[float]] = {}
    same_work, inputs = None, []
    for round_ in range(args.rounds + 1):  # round 0 warms up (and records the run's batches)
        out, worker = prepared_worker(recipe)
        generator = worker.generator
        if round_ % 2 == 0 and inputs:  # the bare loop first in every other round: order hits both
            bare, _ = time_vec2face_bare(generator.model, inputs)
        run = time_vec2face_run(out)
        if same_work is None:
            inputs = bare_masks(generator, run["batches"])
            _, pixels = time_vec2face_bare(generator.model, inputs[:1])
            vectors, seeds = run["batches"][0]
            ours = [np.asarray(im) for im in generator.generate(vectors, seeds)]
            same_work = all(np.array_equal(a, b) for a, b in zip(pixels, ours, strict=True))
            if not same_work:
                raise RuntimeError("the bare loop's images differ from facesynth's: not the same model calls")
        if round_ % 2 == 1 or round_ == 0:
            bare, _ = time_vec2face_bare(generator.model, inputs)
        if round_:
            n = run["images"]
            wall = run["units_seconds"] + run["finalize_seconds"]
            main_cpu = run["units_cpu_seconds"] + run["finalize_cpu_seconds"]
            for key, value in {
                "bare_wall": n / bare["wall"],
                "run_wall": n / wall,
                "ratio_wall": bare["wall"] / wall,
                # images per CPU-second of the thread that drives the model (load hardly changes it)
                "ratio_main_thread_cpu": bare["cpu"] / main_cpu,
                # the model's forward alone, in the run vs the whole bare loop (same calls, same inputs)
                "ratio_forward_cpu": bare["cpu"] / run["model_cpu_seconds"],
                # images per CPU-second of the whole process, encoder and writer threads included
                "ratio_process_cpu": bare["process"] / run["process_cpu_seconds"],
                "outside_forward_ms": (wall - run["model_seconds"]) / n * 1000,
                "outside_forward_cpu_ms": (main_cpu - run["model_cpu_seconds"]) / n * 1000,
            }.items():
                samples.setdefault(key, []).append(value)
    shutil.rmtree(folder)
    return {
        "model": label,
        "images": args.images,
        "batch": args.batch,
        "same_model_calls_checked": same_work,
        **{f"{key}_median": round(statistics.median(values), 3) for key, values in samples.items()},
        "rounds": {key: [round(v, 3) for v in values] for key, values in samples.items()},
    }


class ReplayModel(torch.nn.Module):
    """Stands in for Vec2Face at (nearly) infinite speed: returns stored outputs of the tiny model.

    What is left of a run is all the work that is not the model: variations, seeds, mask draws,
    uint8 and PIL conversion, encoding real images, writing, finalize.
    """

    def __init__(self, outputs: torch.Tensor, config: Any) -> None:
        super().__init__()
        self.outputs, self.config = outputs, config  # the replaced model's config, for describe()

    def forward(self, rep: torch.Tensor, drop: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        if len(rep) > len(self.outputs):
            self.outputs = self.outputs.repeat(-(-len(rep) // len(self.outputs)), 1, 1, 1)
        return self.outputs[: len(rep)].clone()  # a fresh tensor, as a model returns


def replay_model(folder: Path, images: int) -> ReplayModel:
    """Real (random-weight tiny) Vec2Face images, so the encoders see image-like content."""
    from facesynth.generators import load_generator
    from facesynth.generators.vec2face import next_masks

    generator = load_generator("vec2face", model=str(folder), device="cpu", batch_invariant=False)
    vectors = np.random.default_rng(1).normal(0, 1.1, (images, 512)).astype(np.float32)
    with torch.inference_mode():
        drop, masked, _ = next_masks(generator.draws(range(images)))
        return ReplayModel(
            generator.forward(torch.from_numpy(vectors), drop, masked).clone(), generator.model.config
        )


def with_replay(out: Path, replay: str) -> float:
    """Put the replay model (outputs saved in ``replay``) in place of the worker's Vec2Face; returns the
    seconds its encoder processes took to start: the fork server's start the first time in a program,
    milliseconds afterwards (each ``run_units`` stops its processes at its end)."""
    from PIL import Image

    from facesynth.runner import load_worker

    worker = load_worker(out)
    worker.generator.model = ReplayModel(torch.load(replay, weights_only=True), worker.generator.model.config)
    start = time.perf_counter()
    worker.encoder.encode([Image.new("RGB", (112, 112))] * worker.encoder.processes)
    return time.perf_counter() - start


def overhead_run(out: Path, units: list[int] | None = None) -> dict[str, Any]:
    """One run of a prepared folder with the replay model; what each part of the non-model work cost."""
    run = time_vec2face_run(out, units)
    n = run["images"]
    return {
        "images": n,
        "main_thread_ms_per_image": round((run["units_seconds"] - run["model_seconds"]) / n * 1000, 3),
        "main_thread_cpu_ms_per_image": round(
            (run["units_cpu_seconds"] - run["model_cpu_seconds"]) / n * 1000, 3
        ),
        "of_which_generate_ms_per_image": round(
            (run["generate_seconds"] - run["model_seconds"]) / n * 1000, 3
        ),
        "encode_ms_per_image_filter_thread": round(run["encode_seconds"] / n * 1000, 3),
        "finalize_seconds": round(run["finalize_seconds"], 3),
        "images_per_s": round(n / run["units_seconds"], 1),
    }


def _overhead_process(out: str, replay: str, units: list[int], barrier: Any, results: Any) -> None:
    torch.set_num_threads(1)
    ready = with_replay(Path(out), replay)
    barrier.wait()
    start = time.perf_counter()
    report = overhead_run(Path(out), units)
    results.put({**report, "start": start, "end": time.perf_counter(), "encoders_ready_seconds": ready})


def vec2face_overhead(tmp: Path, centres: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Non-model work per image with the replay model: one process (rounds) for each number of encoder
    processes, then 1, 2, 4 worker processes (with the last number of encoder processes each)."""
    from facesynth.generators.vec2face import build_random_vec2face

    folder = tmp / "tiny-replay"
    build_random_vec2face(folder)
    replay = tmp / "replay.pt"
    torch.save(replay_model(folder, 64).outputs, replay)
    n = args.overhead_images
    one_process = []
    for encoders in args.encode_processes:
        # n and 2n images, alternating: the difference is the cost per image without the run's fixed
        # costs (reading the recipe, the last batch's encoding and the last unit's write, ...)
        sizes = {
            k: vec2face_recipe(folder, centres, tmp / f"out-{k}", k, args.overhead_batch, encoders)
            for k in (n, 2 * n)
        }
        rounds, ready = [], []
        for _ in range(args.rounds + 1):  # the first warms up (and starts the encoder processes)
            pair = {}
            for k, recipe in sizes.items():
                out, _ = prepared_worker(recipe)
                ready.append(with_replay(out, str(replay)))
                pair[k] = overhead_run(out)
            rounds.append(pair)
        rounds = rounds[1:]
        cpu = {k: [r[k]["main_thread_cpu_ms_per_image"] * k / 1000 for r in rounds] for k in (n, 2 * n)}
        marginal = [(b - a) / n * 1000 for a, b in zip(cpu[n], cpu[2 * n], strict=True)]
        fixed = [a - m * n / 1000 for a, m in zip(cpu[n], marginal, strict=True)]
        one_process.append(
            {
                "encode_processes": encoders,
                "encoders_ready_seconds": round(max(ready), 3),  # the first start, with the fork server's
                "main_thread_ms_per_image": statistics.median(
                    r[n]["main_thread_ms_per_image"] for r in rounds
                ),
                "main_thread_cpu_ms_per_image": statistics.median(
                    r[n]["main_thread_cpu_ms_per_image"] for r in rounds
                ),
                "marginal_main_thread_cpu_ms_per_image": [round(m, 3) for m in marginal],
                "fixed_main_thread_cpu_seconds_per_run": [round(f, 3) for f in fixed],
                "rounds": [{str(k): v for k, v in r.items()} for r in rounds],
            }
        )
    scaling = []
    for processes in args.processes:
        per_unit = n // 4 // 4  # 4 units per process
        recipe = vec2face_recipe(
            folder, centres, tmp / f"out-p{processes}", n * processes, args.overhead_batch,
            args.encode_processes[-1], identities_per_unit=per_unit,
        )  # fmt: skip
        out, _ = prepared_worker(recipe)
        units = [list(range(p, 4 * processes, processes)) for p in range(processes)]
        reports = run_processes(_overhead_process, [(str(out), str(replay), u) for u in units])
        wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
        scaling.append(
            {
                "processes": processes,
                "encode_processes_each": args.encode_processes[-1],
                "images": sum(r["images"] for r in reports),
                "images_per_s_all": round(sum(r["images"] for r in reports) / wall, 1),
                "main_thread_ms_per_image_each": [r["main_thread_ms_per_image"] for r in reports],
                "main_thread_cpu_ms_per_image_each": [r["main_thread_cpu_ms_per_image"] for r in reports],
                "encode_ms_per_image_each": [r["encode_ms_per_image_filter_thread"] for r in reports],
                "encoders_ready_seconds_each": [round(r["encoders_ready_seconds"], 3) for r in reports],
            }
        )
    return {"images": n, "batch": args.overhead_batch, "one_process": one_process, "scaling": scaling}


def vec2face_main(args: argparse.Namespace) -> None:
    """Vec2Face on CPU, 112 px: ratio_run at the published size (and tiny), and the non-model overhead.

    ratio_run = ``facesynth run`` (filters off, model loaded) / a bare loop over the same model calls
    (target >= 0.95). The overhead is measured with the model replaced by a replay of stored outputs,
    so what remains is everything but the model (target <= 0.5 ms/image of main-thread time).
    """
    from facesynth.generators.vec2face import TINY_CONFIG, Vec2FaceConfig

    tmp = Path(tempfile.mkdtemp(prefix="facesynth-bench-v2f-"))
    centres = tmp / "centres.npy"
    np.save(centres, np.random.default_rng(0).normal(0, 1.1, (2048, 512)).astype(np.float32))
    configs = {"published": Vec2FaceConfig(), "tiny": TINY_CONFIG}
    report: dict[str, Any] = {"device": "cpu", "threads": args.threads, "size": 112, "rounds": args.rounds}
    report["load_average_before"] = round(os.getloadavg()[0], 2)
    report["ratio"] = [vec2face_ratio(m, configs[m], tmp, centres, args) for m in args.models]
    if args.overhead_images:
        report["overhead"] = vec2face_overhead(tmp, centres, args)
    report["load_average_after"] = round(os.getloadavg()[0], 2)
    report["target"] = "ratio_run >= 0.95 (published size); main-thread overhead <= 0.5 ms/image"
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2))


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
    parser.add_argument(
        "--models", nargs="*", default=["published", "tiny"], help="--vec2face: ratio_run models"
    )
    parser.add_argument("--overhead-images", type=int, default=2048, help="--vec2face: 0 skips the overhead")
    parser.add_argument("--overhead-batch", type=int, default=256, help="--vec2face: the recipe's batch")
    parser.add_argument(
        "--processes", type=int, nargs="*", default=[1, 2, 4], help="--vec2face: overhead scaling"
    )
    parser.add_argument(
        "--encode-processes", type=int, nargs="+", default=[0, 1], help="--vec2face: writer.encode_processes"
    )
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
