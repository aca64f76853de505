"""The ``facesynth`` command line. Errors are one line; ``--debug`` shows the traceback.

Exit codes: 0 ok, 2 bad input (recipe, files, arguments), 1 runtime failure (and interruption).
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path
from typing import Any

from facesynth import __version__, layout
from facesynth.errors import FacesynthError, UserInputError


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set identities.count=100 --set filters.0.size=128",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facesynth", description="Synthetic face-recognition datasets from a recipe."
    )
    parser.add_argument("--version", action="version", version=f"facesynth {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="make (or resume) a dataset from a recipe")
    _recipe_args(p)
    p.add_argument("--out", help="output folder (default: output.dir of the recipe)")
    p.add_argument("--overwrite", action="store_true", help="replace an output made from another recipe")
    p.add_argument("--executor", help="local, accelerate, ray or slurm (default: the recipe's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("validate", help="check a recipe and print it resolved")
    _recipe_args(p)

    p = sub.add_parser("info", help="describe a dataset or a run in progress")
    p.add_argument("dataset", help="output folder")
    p.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("schema", help="print the JSON Schema of recipes (for editors)")

    p = sub.add_parser("identities", help="build the identity bank of a recipe alone")
    _recipe_args(p)
    p.add_argument("--out", required=True, help="bank file to write (.safetensors)")

    p = sub.add_parser("gallery", help="embed real people's photos into a gallery file (records its space)")
    p.add_argument("root", help="folder with one subfolder of face images per identity")
    p.add_argument("--embedder", default="dlib", help="embedder name or mapping, e.g. '{name: dlib}'")
    p.add_argument("--out", required=True, help="gallery file to write (.safetensors)")
    p.add_argument("--max-images", type=int, help="images per identity at most")

    p = sub.add_parser("filter", help="run a recipe's filters over an existing dataset")
    p.add_argument("input", help="image folder (one subfolder per identity) or parquet dataset")
    p.add_argument("--recipe", required=True, help="recipe whose filters (and output options) to use")
    p.add_argument("--out", required=True, help="output folder (a facesynth dataset)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an output made from another recipe")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("finalize", help="merge finished units into the dataset (after distributed runs)")
    p.add_argument("out", help="output folder")

    from facesynth.evaluate import add_parser as add_eval_parser  # facesynth eval

    add_eval_parser(sub)
    from facesynth.benchmark import add_parser as add_benchmark_parser  # facesynth benchmark

    add_benchmark_parser(sub)

    p = sub.add_parser("push", help="upload a finished dataset to the Hugging Face Hub (resumable)")
    p.add_argument("out", help="finished output folder")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="dataset repository (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to push to (created if needed; default main)")
    p.add_argument("--dry-run", action="store_true", help="print the upload plan, upload nothing")

    p = sub.add_parser("train", help="train a face-recognition model on a dataset (resumable)")
    p.add_argument("dataset", help="facesynth dataset folder (or parquet file)")
    p.add_argument("--recipe", required=True, help="training recipe YAML (recipes/train/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("export", help="write a finished dataset as ImageFolder, RecordIO, WebDataset or LMDB")
    p.add_argument("out", help="finished output folder")
    p.add_argument("dest", help="destination folder")
    p.add_argument(
        "--to", required=True, choices=["imagefolder", "recordio", "webdataset", "lmdb"], help="format"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")
    p.add_argument("--shard-size-mb", type=float, default=500, help="WebDataset tar shard size")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = sub.add_parser("report", help="measure datasets (ours or anyone's): report.html, stats.json, plots")
    p.add_argument("datasets", nargs="+", metavar="DATASET", help="parquet, image folder, RecordIO or LMDB")
    p.add_argument(
        "--embedder", required=True, help="embedder name or recipe-style mapping, e.g. '{name: dlib}'"
    )
    p.add_argument(
        "--gallery", help="real gallery: embeddings file (.npy/.safetensors/.parquet) or a dataset"
    )
    p.add_argument("--aligned", action="store_true", help="images are already aligned face crops")
    p.add_argument(
        "--detector", default="dlib", help="face detector (with --aligned: for pose only; none: no pose)"
    )
    p.add_argument("--attributes", metavar="MODEL.onnx", help="ONNX attribute classifier (optional)")
    p.add_argument("--cache", help="embedding cache folder (default OUT/cache)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def cmd_report(args: argparse.Namespace) -> int:
    from facesynth.report import report

    report(args.datasets, args.embedder, args.out, args.gallery, args.aligned, args.cache, args.detector,
           args.attributes, progress=not args.no_progress)  # fmt: skip
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from facesynth.api import run

    stats = run(args.recipe, args.out, args.overrides, args.overwrite, args.executor, not args.no_progress)
    if stats:
        print(
            f"done: {stats['images_kept']:,} images of {stats['identities_kept']:,} identities "
            f"in {len(stats['shards'])} shard(s) (pass rate {stats['pass_rate'] or 0:.1%})"
        )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    import yaml

    from facesynth.recipe import load_recipe

    try:
        data = yaml.safe_load(Path(args.recipe).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = None  # load_recipe below reports it properly
    # A recipe with neither identities nor generator is a filter-only recipe (`facesynth filter`).
    filter_only = isinstance(data, dict) and not {"identities", "generator"} & set(data)
    recipe = load_recipe(args.recipe, args.overrides, need_generation=not filter_only)
    print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
    print(f"# recipe OK (hash {recipe.content_hash()})", file=sys.stderr)
    return 0


def dataset_info(out: Path) -> dict[str, Any]:
    """What a dataset holds, or how far a run in progress is."""
    from facesynth.prepare import read_run

    if (out / layout.STATS).exists():
        from facesynth.schema import features_of

        stats = layout.read_json(out / layout.STATS)
        shards = sorted((out / layout.DATA).glob("*.parquet"))
        return {"state": "finalized", **stats, "columns": list(features_of(shards[0])) if shards else []}
    run = read_run(out)
    if run is None:
        raise UserInputError(f"{out} is not a facesynth output (no {layout.STATS} or {layout.RUN})")
    done = [
        layout.read_json(layout.unit_done_marker(out, u))
        for u in range(run["num_units"])
        if layout.unit_done_marker(out, u).exists()
    ]
    failed = (
        sorted(p.name for p in (out / layout.UNITS).glob("*.failed.json"))
        if (out / layout.UNITS).exists()
        else []
    )
    generated = sum(u["generated"] for u in done)
    rows = sum(u["rows"] for u in done)
    return {
        "state": "in progress" if len(done) < run["num_units"] else "ready to finalize",
        "units_total": run["num_units"],
        "units_done": len(done),
        "units_pending": run["num_units"] - len(done),
        "units_failed": len(failed),
        "images_generated": generated,
        "images_kept": rows,
        "pass_rate": rows / generated if generated else None,
        "recipe_hash": run["recipe_hash"],
    }


def cmd_info(args: argparse.Namespace) -> int:
    info = dataset_info(Path(args.dataset))
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    skip = {"shards", "identity_bank", "identities_dropped_dataset_wide"}
    for key, value in info.items():
        if key not in skip:
            print(f"{key:>28}: {value if not isinstance(value, dict) else json.dumps(value)}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from facesynth.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return 0


def cmd_identities(args: argparse.Namespace) -> int:
    from facesynth.faces.gallery import Gallery
    from facesynth.identity.bank import build_bank, separation_stats
    from facesynth.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    options = recipe.bank_options()
    bank = build_bank(options, recipe.seed)
    bank.save(Path(args.out))
    stats = bank.provenance.get("stats")
    if stats is None or "note" in stats:  # above 250k identities build_bank skips the all-pairs statistics
        gallery = Gallery(options.gallery) if options.gallery else None
        stats = separation_stats(bank.vectors, gallery)
    print(json.dumps({"bank": args.out, "identities": len(bank), **stats}, indent=2))
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from facesynth.refilter import filter_dataset

    stats = filter_dataset(
        args.input, args.recipe, args.out, args.overrides, args.overwrite, not args.no_progress
    )
    print(
        f"done: kept {stats['images_kept']:,} of {stats['images_generated']:,} images "
        f"of {stats['identities_kept']:,} identities"
    )
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    from facesynth.finalize import finalize

    stats = finalize(args.out)
    print(f"finalized: {stats['images_kept']:,} images of {stats['identities_kept']:,} identities")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from facesynth.hub import push, upload_plan

    if args.dry_run:
        plan = upload_plan(args.out)
        print("resumable upload, in commits of the library's size:")
        for name in plan.data:
            print(f"  {name}  ({plan.files[name]:,} bytes)")
        print(f"then, in the last commit: {layout.CARD}  ({plan.files[layout.CARD]:,} bytes)")
        print(f"{len(plan.files)} files, {plan.total_bytes / 1e9:.2f} GB -> datasets/{args.repo}")
        return 0
    url = push(args.out, args.repo, private=args.private, revision=args.revision)
    print(f"pushed: {url}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from facesynth.export import export

    summary = export(
        args.out, args.to, args.dest, args.overwrite, args.shard_size_mb, progress=not args.no_progress
    )
    print(f"exported {summary['images']:,} images as {args.to} to {summary['dest']}")
    return 0


COMMANDS = {
    "eval": lambda args: __import__("facesynth.evaluate").evaluate.cmd_eval(args),
    "benchmark": lambda args: _stage_command("facesynth.benchmark", "cmd_benchmark", args),
    "run": cmd_run,
    "validate": cmd_validate,
    "info": cmd_info,
    "schema": cmd_schema,
    "identities": cmd_identities,
    "gallery": lambda args: _stage_command("facesynth.identity.gallery_command", "cmd_gallery", args),
    "filter": cmd_filter,
    "finalize": cmd_finalize,
    "push": cmd_push,
    "export": cmd_export,
    "train": lambda args: _stage_command("facesynth.recognition.train", "cmd_train", args),
    "report": cmd_report,
}


def _stage_command(module: str, name: str, args: argparse.Namespace) -> int:
    import importlib

    return getattr(importlib.import_module(module), name)(args)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except FacesynthError as exc:
        if args.debug:
            raise
        print(f"facesynth: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "facesynth: interrupted; finished units are kept, run the same command again to resume",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        if args.debug:
            raise
        what = "disk full" if exc.errno == errno.ENOSPC else exc.strerror or exc.__class__.__name__
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"facesynth: error: {what}{where}; finished units are kept, rerun to resume", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if args.debug:
            raise
        print(
            f"facesynth: error: {exc.__class__.__name__}: {_one_line(exc)} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
