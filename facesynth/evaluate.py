"""``facesynth eval``: verification accuracy of a face-recognition model on eval sets (insightface's protocol).

    facesynth eval MODEL --bin lfw.bin --bin cfp_fp.bin ... [--arch r50] [--batch-size 64] [--device auto] [--json]

Eval sets are loaded (and checked) before the model, so a bad or malicious file is refused first.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from facesynth.recognition.verification import FIVE_SETS, VerificationResult, average_accuracy


def add_eval_sets_argument(p: argparse.ArgumentParser) -> None:
    """``--bin EVALSET`` (repeatable), shared by ``facesynth eval`` and ``facesynth benchmark``."""
    p.add_argument(
        "--bin",
        dest="sets",
        action="append",
        required=True,
        metavar="EVALSET",
        help="eval set: insightface .bin, pairs list (path1 path2 0|1) or HF dataset folder; repeatable",
    )


def add_parser(sub: Any) -> None:
    """The ``eval`` sub-command's arguments."""
    p = sub.add_parser("eval", help="verification accuracy of a face-recognition model on eval sets")
    p.add_argument(
        "model", help="facesynth train run folder, arcface_torch backbone file (with --arch), or .onnx"
    )
    add_eval_sets_argument(p)
    p.add_argument("--arch", help="architecture of a backbone file: r18, r34, r50, r100, r200")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def report(results: dict[str, VerificationResult]) -> dict[str, Any]:
    """JSON-ready results with the average (and the field's five-set average when all five are there)."""
    five = set(FIVE_SETS) <= set(results)
    return {
        "sets": {name: r.to_dict() for name, r in results.items()},
        "average": average_accuracy(results),
        "five_set_average": average_accuracy({n: results[n] for n in FIVE_SETS}) if five else None,
    }


def format_table(results: dict[str, VerificationResult]) -> str:
    """Accuracy (%), std, VAL@FAR, threshold (squared distance and cosine) and XNorm per set."""
    rows = [("set", "pairs", "accuracy %", "std %", "VAL@FAR=1e-3 %", "threshold", "cosine", "XNorm")]
    for name, r in results.items():
        rows.append(
            (
                name,
                f"{r.pairs}",
                f"{100 * r.accuracy:.2f}",
                f"{100 * r.accuracy_std:.2f}",
                f"{100 * r.val:.2f}",
                f"{r.threshold:.3f}",
                f"{r.threshold_cosine:.3f}",
                f"{r.xnorm:.3f}" if r.xnorm is not None else "-",
            )
        )
    summary = report(results)
    five = summary["five_set_average"]
    if five is None or len(results) > 5:
        rows.append(("average", "", f"{100 * summary['average']:.2f}", "", "", "", "", ""))
    if five is not None:  # LFW, CFP-FP, CPLFW, AgeDB-30, CALFW: the field's tables report this mean
        rows.append(("five-set avg", "", f"{100 * five:.2f}", "", "", "", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    footer = 2 if five is not None and len(results) > 5 else 1
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - footer, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from facesynth.errors import UserInputError
    from facesynth.recognition.embed import evaluate, load_model
    from facesynth.recognition.evalsets import load_eval_sets

    if args.batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    evalsets = load_eval_sets(args.sets)
    model = load_model(args.model, args.arch, args.device)
    results = evaluate(model, evalsets, args.batch_size, progress=not args.no_progress)
    print(
        json.dumps({"model": args.model, **report(results)}, indent=2) if args.json else format_table(results)
    )
    return 0
