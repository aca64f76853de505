"""``facesynth benchmark``: dataset recipe -> dataset -> trained FR model -> the field's table row.

    facesynth benchmark RECIPE --train-recipe T --bin lfw.bin ... --out DIR [--baseline REAL]

Every stage resumes where it stopped: ``DIR/dataset`` is a ``facesynth run`` output (finished units
are kept), ``DIR/train`` a ``facesynth train`` run (checkpoints), and ``DIR/eval.json`` is written once
the model it names is evaluated. ``--baseline`` trains the same training recipe on a real dataset in
``DIR/baseline/``: harnesses differ by about half a point on the same data (FIELD-NOTES 8), so a fair
comparison puts a real-data baseline through the same harness.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from facesynth import layout
from facesynth.errors import UserInputError

# Verification accuracy (%) of models trained on published sets (FIELD-NOTES 3, 0.5M images unless
# said): LFW, CFP-FP, CPLFW, AgeDB-30, CALFW and their average.
PUBLISHED: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("IDiff-Face (0.5M)", (98.00, 85.47, 80.45, 86.43, 90.65, 88.20)),
    ("DCFace (0.5M)", (98.55, 85.33, 82.62, 89.70, 91.60, 89.56)),
    ("Arc2Face (0.5M)", (98.81, 91.87, 85.16, 90.18, 92.63, 91.73)),
    ("HSFace10K / Vec2Face (0.5M)", (98.87, 88.97, 85.47, 93.12, 93.57, 92.00)),
    ("CemiFace (0.5M)", (99.03, 91.06, 87.65, 91.33, 92.42, 92.30)),
    ("VFace10K / Vec2Face+ (0.5M)", (99.35, 93.56, 88.03, 94.33, 94.17, 93.89)),
    ("HSFace300K (15M)", (99.30, 91.54, 87.70, 94.45, 94.58, 93.52)),
    ("CASIA-WebFace, real (0.49M)", (99.38, 96.91, 89.78, 94.50, 93.35, 94.79)),
)
HEADER = ("training set", "LFW", "CFP-FP", "CPLFW", "AgeDB", "CALFW", "avg")
EVAL_FILE = "eval.json"


def add_parser(sub: Any) -> None:
    """The ``benchmark`` sub-command's arguments."""
    from facesynth.evaluate import add_eval_sets_argument

    p = sub.add_parser("benchmark", help="recipe -> dataset -> trained model -> verification table row")
    p.add_argument("recipe", help="dataset recipe YAML")
    p.add_argument("--train-recipe", required=True, help="training recipe YAML (recipes/train/*.yaml)")
    add_eval_sets_argument(p)
    p.add_argument("--out", required=True, help="benchmark folder (dataset/, train/, eval.json)")
    p.add_argument("--baseline", metavar="DATASET", help="also train and evaluate on this real dataset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dataset recipe key")  # fmt: skip
    p.add_argument("--train-set", dest="train_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training recipe key")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64, help="eval images per forward pass (default 64)")
    p.add_argument("--device", default="auto", help="eval device: auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def row_values(accuracies: dict[str, float]) -> tuple[float | None, ...]:
    """Accuracies (%) in the table's column order; the average only when all five sets are there."""
    from facesynth.recognition.verification import FIVE_SETS

    values = tuple(100 * accuracies[name] if name in accuracies else None for name in FIVE_SETS)
    average = sum(values) / len(values) if None not in values else None  # type: ignore[arg-type]
    return (*values, average)


def format_table(rows: list[tuple[str, tuple[float | None, ...]]]) -> str:
    """The published rows, then ours, aligned like the field's tables."""
    cells = [HEADER] + [
        (name, *(f"{v:.2f}" if v is not None else "-" for v in values)) for name, values in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(PUBLISHED) + 2, "-" * len(lines[0]))
    return "\n".join(lines)


def evaluate_run(run: Path, evalsets: list[Any], batch_size: int, device: str, progress: bool) -> dict:
    """Accuracies of a finished training run, cached in ``run/../eval.json`` for that very model file."""
    from facesynth.fingerprint import file_sha256
    from facesynth.recognition.embed import evaluate, load_model

    cache = run.parent / EVAL_FILE
    key = {"model_sha256": file_sha256(run / "model.safetensors"), "sets": [s.name for s in evalsets]}
    if cache.is_file():
        cached = layout.read_json(cache)
        if {k: cached.get(k) for k in key} == key:
            return cached
    results = evaluate(load_model(run, device=device), evalsets, batch_size, progress=progress)
    report = {**key, "accuracy": {name: r.accuracy for name, r in results.items()}}
    report["details"] = {name: r.to_dict() for name, r in results.items()}
    layout.atomic_write_json(cache, report)
    return report


def train_and_evaluate(
    dataset: Path, train_recipe: Any, out: Path, evalsets: list[Any], args: argparse.Namespace
) -> dict[str, Any]:
    from facesynth.recognition.train import train

    train(dataset, train_recipe, out / "train", progress=not args.no_progress)
    return evaluate_run(out / "train", evalsets, args.batch_size, args.device, not args.no_progress)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) every stage; returns the rows and where everything is."""
    from facesynth.api import run
    from facesynth.recognition.evalsets import load_eval_sets
    from facesynth.recognition.train import load_train_recipe

    if args.batch_size < 1:
        raise UserInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    # Check every input before hours of generation: eval sets (restricted unpickler) and the training recipe.
    evalsets = load_eval_sets(args.sets)
    train_recipe = load_train_recipe(args.train_recipe, args.train_overrides)
    out = Path(args.out)
    stats = run(args.recipe, out / "dataset", args.overrides, progress=not args.no_progress)
    ours = train_and_evaluate(out / "dataset", train_recipe, out, evalsets, args)
    rows = [(f"this run: {Path(args.recipe).stem}", row_values(ours["accuracy"]))]
    result: dict[str, Any] = {
        "dataset": str(out / "dataset"),
        "images": stats.get("images_kept"),
        "eval": ours,
    }
    if args.baseline:
        base = train_and_evaluate(Path(args.baseline), train_recipe, out / "baseline", evalsets, args)
        rows.append((f"same harness, real: {Path(args.baseline).name}", row_values(base["accuracy"])))
        result["baseline"] = base
    result["rows"] = [{"name": name, **dict(zip(HEADER[1:], values, strict=True))} for name, values in rows]
    result["table"] = format_table([*PUBLISHED, *rows])
    layout.atomic_write_json(out / "benchmark.json", result)
    return result


def cmd_benchmark(args: argparse.Namespace) -> int:
    result = run_benchmark(args)
    print(json.dumps(result, indent=2) if args.json else result["table"])
    return 0
