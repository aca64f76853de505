"""Time spent outside the generator per image, and peak memory as the number of units grows.

Each configuration runs in its own subprocess (so peak RSS is its own) with the tiny generator:
overhead = (time inside units - time inside generator.generate + finalize time) / images.
Prints one JSON object. Target: <= 5 ms of overhead per image; peak memory flat for 4x more units.

    python benchmarks/pipeline_overhead.py [--identities 32] [--images 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"


def child(size: int, identities: int, per_unit: int, images: int, out: Path) -> dict:
    import torch

    from facesynth.finalize import finalize
    from facesynth.prepare import prepare
    from facesynth.recipe import load_recipe
    from facesynth.runner import load_worker, run_units

    torch.set_num_threads(1)
    recipe = load_recipe(
        RECIPE,
        [
            f"generator.size={size}",
            "generator.steps=2",
            f"identities.count={identities}",
            f"output.identities_per_unit={per_unit}",
            f"variations.images_per_identity={images}",
            f"variations.min_images_per_identity={images}",
        ],
    )
    run = prepare(recipe, out, progress=False)
    load_worker(out)  # model loading is not per-image work
    t0 = time.perf_counter()
    run_units(out, range(run["num_units"]), progress=False)
    t1 = time.perf_counter()
    stats = finalize(out)
    t2 = time.perf_counter()
    images_kept = stats["images_generated"]
    overhead = (t1 - t0) - stats["generator_seconds"] + (t2 - t1)
    return {
        "size": size,
        "units": run["num_units"],
        "images": images_kept,
        "generator_s": round(stats["generator_seconds"], 3),
        "units_wall_s": round(t1 - t0, 3),
        "finalize_s": round(t2 - t1, 3),
        "overhead_ms_per_image": round(1000 * overhead / images_kept, 3),
        "overhead_to_generator_ratio": round(overhead / stats["generator_seconds"], 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def spawn(*args: object) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", *map(str, args), str(Path(tmp) / "out")]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identities", type=int, default=32)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, identities, per_unit, images, out = args.child
        print(json.dumps(child(int(size), int(identities), int(per_unit), int(images), Path(out))))
        return
    n, k = args.identities, args.images
    runs = {f"{size}px": spawn(size, n, max(1, n // 4), k) for size in (112, 512)}
    few, many = spawn(112, n, max(1, n // 2), k), spawn(112, 4 * n, max(1, n // 2), k)
    report = {
        "overhead": runs,
        "memory_flat": {
            "units": [few["units"], many["units"]],
            "peak_rss_mb": [few["peak_rss_mb"], many["peak_rss_mb"]],
            "ratio": round(many["peak_rss_mb"] / few["peak_rss_mb"], 3),
        },
        "target_ms_per_image": 5.0,
        "meets_target": all(r["overhead_ms_per_image"] <= 5.0 for r in runs.values()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
