"""Identity-bank sampling benchmark; prints one JSON object.

(a) N identities at max cosine 0.3 from an anisotropic Gaussian prior: facesynth's exact blocked
    greedy vs a naive greedy (each candidate against all kept vectors with numpy) over the same
    candidate stream. Target: >= 20x faster.
(b) More identities from the same prior with a large gallery at 0.3: wall time, peak memory, and
    the ratio to the least work an exact check needs, timed here: one bfloat16 product of all drawn
    candidates against the gallery plus one of the final bank against itself. Target: <= 1.5x.
(c) 1,000,000 identities from the uniform sphere, no gallery: wall time and peak memory.
    Target on a 2-core machine: <= 25 min, <= 6 GB.

Each part runs in its own process so that peak memory is per part.
``--quick`` shrinks everything to a seconds-long smoke run.

    python benchmarks/identity_sampling.py --quick
    python benchmarks/identity_sampling.py > identity_sampling.json
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
import torch

from facesynth.faces.gallery import Gallery
from facesynth.identity.bank import select_separated
from facesynth.identity.samplers import GaussianSampler, SphereSampler
from facesynth.separation import SAFETY


def prior(dim: int, exponent: float, seed: int = 0) -> GaussianSampler:
    """An anisotropic Gaussian: variances (1 + i)^-exponent along a random orthonormal basis."""
    basis, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    factor = (basis * np.sqrt((1.0 + np.arange(dim)) ** -exponent)).T
    return GaussianSampler.from_moments(np.zeros(dim), factor)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def recording(sampler, rng: np.random.Generator, record: list[np.ndarray]):
    def draw(n: int) -> np.ndarray:
        x = sampler.draw(n, rng)
        record.append(x)
        return x

    return draw


def naive_greedy(candidates: np.ndarray, count: int, threshold: float) -> np.ndarray:
    kept = np.empty((count, candidates.shape[1]), dtype=np.float32)
    n = 0
    for x in candidates:
        u = x / np.linalg.norm(x)
        if n == 0 or float((kept[:n] @ u).max()) <= threshold - SAFETY:
            kept[n] = u
            n += 1
            if n == count:
                break
    return kept[:n]


def bf16_product_seconds(a: np.ndarray, b_low: torch.Tensor, rows: int = 8192, cols: int = 65536) -> float:
    """Time of the bfloat16 products of unit rows of ``a`` against ``b_low`` (output discarded)."""
    a_low = torch.from_numpy(a / np.linalg.norm(a, axis=1, keepdims=True)).to(torch.bfloat16)
    out = torch.empty((rows, cols), dtype=torch.bfloat16)
    start = time.perf_counter()
    for i in range(0, len(a_low), rows):
        q = a_low[i : i + rows]
        for j in range(0, len(b_low), cols):
            k = b_low[j : j + cols]
            torch.mm(q, k.T, out=out[: len(q), : len(k)])
    return time.perf_counter() - start


def stream(pool: np.ndarray):
    """A sampler over pre-drawn candidates, so both methods see the very same stream."""
    position = 0

    def draw(n: int) -> np.ndarray:
        nonlocal position
        position += n
        return pool[position - n : position]

    return draw


def part_a(args: argparse.Namespace) -> dict:
    sampler = prior(args.dim, args.exponent)
    # Both methods are warmed up once (torch's and numpy's first calls) on a separate small stream.
    warm = sampler.draw(4000, np.random.default_rng(5))
    select_separated(stream(warm), 1000, args.threshold, len(warm))
    naive_greedy(warm, 1000, args.threshold)
    start = time.perf_counter()
    pool = sampler.draw(args.a_pool * args.a_count, np.random.default_rng(1))
    draw_seconds = time.perf_counter() - start
    # Rounds alternate the two methods, so both see the same drifts of this machine's speed (2x
    # over minutes); the speedup is the ratio of their mean wall times over the rounds.
    ours, baseline = [], []
    for _ in range(args.a_rounds):
        start = time.perf_counter()
        result = select_separated(stream(pool), args.a_count, args.threshold, len(pool))
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        naive = naive_greedy(pool, args.a_count, args.threshold)
        baseline.append(time.perf_counter() - start)
    ours_mean, baseline_mean = float(np.mean(ours)), float(np.mean(baseline))
    unit = result.vectors / np.linalg.norm(result.vectors, axis=1, keepdims=True)
    return {
        "identities": args.a_count,
        "dim": args.dim,
        "max_cosine": args.threshold,
        "prior_exponent": args.exponent,
        "candidates_drawn": result.drawn,
        "candidates_rejected": result.drawn - args.a_count,
        "facesynth_seconds": round(ours_mean, 3),
        "naive_seconds": round(baseline_mean, 2),
        "speedup": round(baseline_mean / ours_mean, 1),
        "median_round_speedup": round(float(np.median(np.array(baseline) / np.array(ours))), 1),
        "rounds": [[round(o, 3), round(b, 2), round(b / o, 1)] for o, b in zip(ours, baseline, strict=True)],
        # Drawing the stream is the same for both; with it counted on both sides:
        "draw_seconds": round(draw_seconds, 3),
        "speedup_with_draw": round((baseline_mean + draw_seconds) / (ours_mean + draw_seconds), 1),
        "same_bank_as_naive": bool(len(naive) == len(unit) and np.allclose(naive, unit, atol=1e-6)),
        "target_speedup": 20,
    }


def part_b(args: argparse.Namespace) -> dict:
    sampler = prior(args.dim, args.exponent)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gallery.npy"
        # A real-identity stand-in: mostly isotropic vectors, plus a share drawn from the prior so
        # that some candidates do land near the gallery and get rejected.
        gallery = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.gallery, args.dim))
        rng = np.random.default_rng(2)
        from_prior = int(args.gallery * args.gallery_prior_share)
        for start in range(0, args.gallery, 65536):
            stop = min(start + 65536, args.gallery)
            block = rng.standard_normal((stop - start, args.dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            mixed = max(0, min(stop, from_prior) - start)
            if mixed:
                block[:mixed] = sampler.draw(mixed, rng)
            gallery[start:stop] = block
        gallery.flush()
        del gallery
        record: list[np.ndarray] = []
        start = time.perf_counter()
        g = Gallery(path, "cpu")
        result = select_separated(
            recording(sampler, np.random.default_rng(3), record),
            args.b_count,
            args.threshold,
            100 * args.b_count,
            gallery=g,
            max_gallery_cosine=args.threshold,
        )
        ours = time.perf_counter() - start
        candidates = np.concatenate(record)[: result.drawn]
        bank_low = torch.from_numpy(
            result.vectors / np.linalg.norm(result.vectors, axis=1, keepdims=True)
        ).to(torch.bfloat16)
        least = bf16_product_seconds(candidates, g.screen.low) + bf16_product_seconds(
            result.vectors, bank_low
        )
        return {
            "identities": args.b_count,
            "gallery_size": args.gallery,
            "max_cosine": args.threshold,
            "max_gallery_cosine": args.threshold,
            "candidates_drawn": result.drawn,
            "rejected_near_identity": result.rejected_near_identity,
            "rejected_near_gallery": result.rejected_gallery,
            "facesynth_seconds": round(ours, 2),
            "least_exact_work_seconds": round(least, 2),
            "ratio_to_least_work": round(ours / least, 3),
            "peak_memory_gb": round(peak_gb(), 2),
            "target_ratio": 1.5,
        }


def part_c(args: argparse.Namespace) -> dict:
    sampler = SphereSampler(SphereSampler.Options(dim=args.dim))
    rng = np.random.default_rng(4)
    start = time.perf_counter()
    result = select_separated(lambda n: sampler.draw(n, rng), args.c_count, args.threshold, 2 * args.c_count)
    seconds = time.perf_counter() - start
    return {
        "identities": args.c_count,
        "sampler": "sphere",
        "max_cosine": args.threshold,
        "candidates_drawn": result.drawn,
        "facesynth_seconds": round(seconds, 1),
        "facesynth_minutes": round(seconds / 60, 2),
        "peak_memory_gb": round(peak_gb(), 2),
        "target_minutes": 25,
        "target_memory_gb": 6,
    }


PARTS = {"a": part_a, "b": part_b, "c": part_c}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    parser.add_argument("--parts", default="abc")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--exponent", type=float, default=0.7, help="anisotropy of the prior")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--a-count", type=int, default=20_000)
    parser.add_argument("--a-pool", type=int, default=3, help="(a) draws this many candidates per identity")
    parser.add_argument("--a-rounds", type=int, default=5, help="(a) timed rounds of both methods")
    parser.add_argument("--b-count", type=int, default=100_000)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--gallery-prior-share", type=float, default=0.0005)
    parser.add_argument("--c-count", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.quick and not args.part:
        args.a_count, args.b_count, args.gallery, args.c_count = 2000, 3000, 50_000, 20_000
    if args.part:
        print(json.dumps(PARTS[args.part](args)))
        return
    report = {"torch_threads": torch.get_num_threads(), "device": "cpu", "quick": args.quick}
    passthrough = [
        f"--dim={args.dim}",
        f"--exponent={args.exponent}",
        f"--threshold={args.threshold}",
        f"--a-count={args.a_count}",
        f"--a-pool={args.a_pool}",
        f"--a-rounds={args.a_rounds}",
        f"--b-count={args.b_count}",
        f"--gallery={args.gallery}",
        f"--gallery-prior-share={args.gallery_prior_share}",
        f"--c-count={args.c_count}",
    ]
    for name in args.parts:
        out = subprocess.run(
            [sys.executable, __file__, *passthrough, "--part", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            report[name] = {"error": out.stderr.strip().splitlines()[-1:]}
        else:
            report[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps({name: report[name]}), file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
