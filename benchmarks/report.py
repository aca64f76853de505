"""``facesynth report`` on cached embeddings: time and peak memory at 10,000 x 50 and 4x that; prints JSON.

No images are needed: the report's figures are computed from its embedding cache (embeddings,
labels, per-image measures), so this writes synthetic cache entries in that exact format and runs
the analysis, the plots, stats.json and the page on them (picture grids need images and are left
out; so is a gallery). Each size is written by one subprocess and reported on by another, whose own
peak RSS (``ru_maxrss``) is what is measured. Targets: <= 60 s and <= 4 GB at 10,000 x 50;
near-linear time and flat memory per identity at 4x.

    python benchmarks/report.py [--identities 10000] [--images 50] [--growth 4] [--dim 512] [--rounds 2]

Per size: wall and CPU seconds, each step's wall and CPU seconds (``Analysis.seconds``: reading the cache,
per-identity figures, non-mated pairs, verification with bootstrap, the centroid pair scan,
leakage when a gallery is given, the page) and peak memory; the 4x ratios per round and of the
fastest round of each size.
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

import numpy as np


def make_entry(folder: Path, identities: int, images: int, dim: int) -> None:
    """A cache entry of ``identities`` x ``images`` ArcFace-like unit vectors (mated cosine ~0.28, non-mated ~0)."""
    from facesynth.report.cache import CACHE_VERSION

    folder.mkdir(parents=True)
    n = identities * images
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(folder / "embeddings.npy", mode="w+", dtype="<f4", shape=(n, dim))
    step = 1000
    for k0 in range(0, identities, step):
        k1 = min(identities, k0 + step)
        centre = rng.standard_normal((k1 - k0, 1, dim)).astype(np.float32)
        x = centre + 1.6 * rng.standard_normal((k1 - k0, images, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
        out[k0 * images : k1 * images] = x.reshape(-1, dim)
    out.flush()
    del out
    np.save(folder / "labels.npy", np.repeat(np.arange(identities, dtype=np.int64), images))
    np.save(folder / "index.npy", np.arange(n, dtype=np.int64))
    measures = {k: rng.normal(0, 15, n).astype(np.float32) for k in ("yaw", "pitch", "roll")}
    measures |= {"blur": rng.gamma(4, 100, n).astype(np.float32), "det_score": np.ones(n, np.float32)}
    np.savez(folder / "measures.npz", **measures)
    meta = {"version": CACHE_VERSION, "dataset": "synthetic", "format": "cache", "space": "synthetic:512",
            "identity_names": [str(k) for k in range(identities)], "attribute_labels": {}}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))


def run_report(folder: Path, out: Path) -> dict:
    from facesynth.report import write_report
    from facesynth.report.analyse import analyse
    from facesynth.report.cache import read_entry

    start = time.perf_counter()
    entry = read_entry(folder)
    analysis = analyse(entry, "synthetic", progress=False)
    analysed = time.perf_counter()
    write_report(out, [analysis], None, None, {"embedder": "synthetic"})
    done = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kb = usage.ru_maxrss
    steps = {k: round(v, 3) for k, v in analysis.seconds.items()} | {"page": round(done - analysed, 3)}
    steps_cpu = {k: round(v, 3) for k, v in analysis.cpu_seconds.items()}
    # CPU seconds since the start (import included): on a shared machine, wall time also counts waiting
    return {"seconds": done - start, "cpu_seconds": usage.ru_utime + usage.ru_stime, "steps": steps, "steps_cpu": steps_cpu,
            "peak_gb": peak_kb / 2**20, "images": len(entry), "identities": entry.classes}  # fmt: skip


def child(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--identities", type=int, default=10_000)
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--growth", type=int, default=4)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of both sizes")
    p.add_argument("--entries", help="keep the synthetic cache entries in this folder and reuse them")
    p.add_argument("--make", nargs=2, metavar=("FOLDER", "IDENTITIES"))
    p.add_argument("--run", nargs=2, metavar=("FOLDER", "OUT"))
    args = p.parse_args()
    if args.make:
        make_entry(Path(args.make[0]), int(args.make[1]), args.images, args.dim)
        print("{}")
        return
    if args.run:
        print(json.dumps(run_report(Path(args.run[0]), Path(args.run[1]))))
        return
    results: dict = {"rounds": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.entries) if args.entries else Path(tmp)
        for scale in (1, args.growth):
            folder = root / f"cache-{args.identities * scale}x{args.images}x{args.dim}"
            if not (folder / "meta.json").is_file():
                child("--make", str(folder), str(args.identities * scale), "--images", str(args.images),
                      "--dim", str(args.dim))  # fmt: skip
        # sizes alternate (1, 4, 1, 4, ...): a shared machine's load drifts, and alternating spreads it
        for r in range(args.rounds):
            one = {}
            for scale in (1, args.growth):
                folder = root / f"cache-{args.identities * scale}x{args.images}x{args.dim}"
                one[f"x{scale}"] = child("--run", str(folder), str(Path(tmp) / f"out-{r}-{scale}"))
            one["time_ratio"] = one[f"x{args.growth}"]["seconds"] / one["x1"]["seconds"]
            one["cpu_ratio"] = one[f"x{args.growth}"]["cpu_seconds"] / one["x1"]["cpu_seconds"]
            one["memory_ratio"] = one[f"x{args.growth}"]["peak_gb"] / one["x1"]["peak_gb"]
            results["rounds"].append(one)
            print(json.dumps(one), file=sys.stderr, flush=True)
    best = {
        k: min((r[k] for r in results["rounds"]), key=lambda x: x["seconds"])
        for k in ("x1", f"x{args.growth}")
    }
    results["fastest"] = best
    results["time_ratio_of_fastest"] = best[f"x{args.growth}"]["seconds"] / best["x1"]["seconds"]
    results["cpu_ratio_of_fastest"] = best[f"x{args.growth}"]["cpu_seconds"] / best["x1"]["cpu_seconds"]
    results["memory_ratio"] = best[f"x{args.growth}"]["peak_gb"] / best["x1"]["peak_gb"]
    results["meets_targets"] = best["x1"]["seconds"] <= 60 and best["x1"]["peak_gb"] <= 4
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
