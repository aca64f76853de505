"""Eval protocol cost: everything but the forward passes, against an IResNet-50's forward passes and
against insightface's per-threshold loops.

    python benchmarks/eval_protocol.py [--pairs 6000 12000] [--rounds 3] [--r50-batches 3]

Per eval set of N pairs (2N images, each also flipped: 4N forward passes):

- protocol = image preparation (JPEG decode, RGB, flip, normalisation; timed on a sample of real
  112x112 JPEGs and scaled to 2N images) + ``verification.evaluate_raw`` (XNorm, flip fusion, folds,
  thresholds, VAL) timed on random embeddings of N pairs;
- forward = IResNet-50 (arcface_torch layout, batch ``--batch``) on this CPU: a few batches timed after
  a warm-up and scaled to 4N images (an extrapolation; the JSON says so);
- loop = the same protocol computed the way insightface's ``calculate_roc`` / ``calculate_val`` do it
  (one boolean pass over the pairs per fold and threshold), written here for timing; its results are
  checked equal to ours.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import cv2
import numpy as np
import torch

from facesynth.recognition import verification as v
from facesynth.recognition.embed import normalise
from facesynth.recognition.evalsets import decode_image, prepare_image


def loop_protocol(embeddings: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Accuracy and VAL by one pass per (fold, threshold), as insightface's loops compute them."""
    dist = v.pair_distances(embeddings)
    bounds = v.fold_bounds(len(dist))
    accuracies, vals = [], []
    for a, b in bounds:
        test = np.zeros(len(dist), bool)
        test[a:b] = True

        def counts(threshold: float, mask: np.ndarray) -> tuple[int, int, int, int]:
            accepted = dist[mask] < threshold
            same = issame[mask]
            return (
                int(np.sum(accepted & same)),
                int(np.sum(accepted & ~same)),
                int(np.sum(~accepted & ~same)),
                int(np.sum(~accepted & same)),
            )

        train_acc = []
        for t in v.ACCURACY_THRESHOLDS:
            tp, fp, tn, fn = counts(t, ~test)
            train_acc.append((tp + tn) / (~test).sum())
        for t in v.ACCURACY_THRESHOLDS:  # insightface also fills the ROC on the held-out fold
            counts(t, test)
        tp, fp, tn, fn = counts(v.ACCURACY_THRESHOLDS[int(np.argmax(train_acc))], test)
        accuracies.append((tp + tn) / (b - a))
        far_train = []
        for t in v.VAL_THRESHOLDS:
            tp, fp, tn, fn = counts(t, ~test)
            far_train.append(fp / (fp + tn))
        far_train = np.array(far_train)
        thr = (
            v._interpolate_threshold(far_train, v.VAL_THRESHOLDS, v.FAR_TARGET)
            if far_train.max() >= v.FAR_TARGET
            else 0.0
        )
        tp, fp, tn, fn = counts(thr, test)
        vals.append(tp / (tp + fn))
    return float(np.mean(accuracies)), float(np.mean(vals))


def random_case(pairs: int, dim: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    issame = rng.random(pairs) < 0.5
    centres = rng.standard_normal((pairs, 2, dim)).astype(np.float32)
    centres[issame, 1] = centres[issame, 0]
    original = (centres + 2.0 * rng.standard_normal((pairs, 2, dim), dtype=np.float32)).reshape(-1, dim)
    flipped = original + 0.3 * rng.standard_normal(original.shape, dtype=np.float32)
    return original, flipped, issame


def best_of(rounds: int, fn) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def image_prep_seconds(sample: int) -> float:
    """Per image: decode a 112x112 JPEG, RGB, check size, normalise it and its flip."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (sample, 14, 14, 3), dtype=np.uint8)
    jpegs = [cv2.imencode(".jpg", cv2.resize(s, (112, 112)))[1].tobytes() for s in small]

    def run() -> None:
        for start in range(0, sample, 64):
            batch = np.stack([prepare_image(decode_image(j, "bench")) for j in jpegs[start : start + 64]])
            normalise(batch)
            normalise(batch[:, :, ::-1])

    return best_of(2, run) / sample


def r50_seconds_per_image(batch: int, batches: int) -> float:
    from facesynth.recognition.iresnet import iresnet

    model = iresnet("r50").eval()
    x = torch.randn(batch, 3, 112, 112)
    with torch.no_grad():
        model(x)  # warm-up
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
    return (time.perf_counter() - start) / (batch * batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[6000, 12000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--r50-batches", type=int, default=3)
    parser.add_argument("--image-sample", type=int, default=1024)
    parser.add_argument("--no-loop", action="store_true", help="skip the (slow) insightface-style loops")
    args = parser.parse_args()

    prep = image_prep_seconds(args.image_sample)
    forward = r50_seconds_per_image(args.batch, args.r50_batches)
    out: dict = {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "image_prep_ms_per_image": 1000 * prep,
        "r50_forward_ms_per_image": 1000 * forward,
        "r50_note": f"{args.r50_batches} batches of {args.batch} timed after a warm-up, scaled to 4N images",
        "sets": {},
    }
    for pairs in args.pairs:
        original, flipped, issame = random_case(pairs)
        ours = best_of(args.rounds, lambda o=original, f=flipped, s=issame: v.evaluate_raw(o, f, s))
        protocol = ours + prep * 2 * pairs
        forward_total = forward * 4 * pairs
        entry = {
            "verify_s": ours,
            "image_prep_s": prep * 2 * pairs,
            "protocol_s": protocol,
            "r50_forward_s_extrapolated": forward_total,
            "protocol_over_forward": protocol / forward_total,
        }
        if not args.no_loop:
            fused = v.fuse_flips(original, flipped)
            start = time.perf_counter()
            loop_acc, loop_val = loop_protocol(fused, issame)
            loop = time.perf_counter() - start
            result = v.verify(fused, issame)
            assert (loop_acc, loop_val) == (result.accuracy, result.val), "loop and vectorised results differ"
            verify_only = best_of(args.rounds, lambda e=fused, s=issame: v.verify(e, s))
            entry.update(
                {"loop_s": loop, "verify_only_s": verify_only, "loop_over_verify": loop / verify_only}
            )
        out["sets"][str(pairs)] = entry
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
