"""Preparing an output folder, loading a worker, and running units: what every executor shares."""

from __future__ import annotations

import math
import os
import platform
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from facesynth import __version__, layout
from facesynth.conditions import check_mixable, made_with
from facesynth.errors import FacesynthError, UserInputError
from facesynth.pipeline import UnitPlan, UnitResult, Worker, run_units_overlapped
from facesynth.recipe import Recipe, load_recipe

# Rough bytes per pixel of an encoded image, to size units from output.shard_size_mb.
_BYTES_PER_PIXEL = {"jpeg": 0.5, "webp": 0.35, "png": 2.0}


def output_dir(recipe: Recipe, out: str | Path | None) -> Path:
    path = out or recipe.output.dir
    if not path:
        raise UserInputError("no output folder: pass --out DIR or set output.dir in the recipe")
    return Path(path).expanduser().resolve()


def _stored_size(recipe: Recipe) -> int:
    """Side of the stored image: the aligned crop when a face filter runs, else the generator's."""
    face = next((f for f in recipe.filters if f.name == "face"), None)
    if face is not None and recipe.writer.store == "aligned":
        return int(face.options.get("size", 112))
    assert recipe.generator is not None
    from facesynth.generators import GENERATORS

    options = GENERATORS.parse_options(recipe.generator.name, recipe.generator.options)
    return int(getattr(options, "size", 512))


def identities_per_unit(recipe: Recipe) -> int:
    if recipe.output.identities_per_unit:
        return recipe.output.identities_per_unit
    image_bytes = _stored_size(recipe) ** 2 * _BYTES_PER_PIXEL[recipe.output.image_format]
    per_identity = image_bytes * recipe.variations.images_per_identity
    return max(1, math.floor(recipe.output.shard_size_mb * (1 << 20) / per_identity))


def read_run(out: Path) -> dict[str, Any] | None:
    path = Path(out) / layout.RUN
    return layout.read_json(path) if path.exists() else None


def prepare(recipe: Recipe, out: Path, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Create (or check) the output folder: resolved recipe, identity bank, unit plan.

    Idempotent: an existing folder made from the same recipe is reused as it is, which is how a
    rerun resumes. A folder made from another recipe is refused unless ``overwrite``.
    """
    out.mkdir(parents=True, exist_ok=True)
    # Listed before run.json is read: if another worker finishes preparing in between, its run.json
    # is found below instead of its files being taken for a foreign folder.
    entries = {p.name for p in out.iterdir()}
    run = read_run(out)
    recipe_hash = recipe.content_hash()
    if run is not None and run["recipe_hash"] != recipe_hash:
        if not overwrite:
            raise UserInputError(
                f"{out} holds a run of a different recipe (hash {run['recipe_hash']}, this one "
                f"{recipe_hash}); pass --overwrite to replace it, or choose another --out"
            )
        clear_output(out)
        run = None
    elif run is None and entries and not _being_prepared(out, entries, recipe_hash):
        if not overwrite:
            raise UserInputError(f"{out} is not empty and is not a facesynth output; choose another --out")
        clear_output(out)
    resolved = recipe.model_copy(update={"output": recipe.output.model_copy(update={"dir": str(out)})})
    text = yaml.safe_dump(resolved.to_dict(), sort_keys=False).encode()
    if run is not None:
        # Same rows, maybe other execution keys (e.g. a smaller generator.batch_size after an out-of-memory
        # error): the workers load the generator from this file, so it must say how to run now.
        if (out / layout.RECIPE).read_bytes() != text:
            layout.atomic_write_bytes(out / layout.RECIPE, text)
        return run

    # Several workers may prepare at once (Slurm array tasks): each writes the same files, each
    # atomically, so they agree. The recipe goes first: it says whose bank a bank file is.
    layout.atomic_write_bytes(out / layout.RECIPE, text)
    bank = _build_or_load_bank(recipe, out, progress)
    _check_dims(recipe, bank.dim)
    plan = UnitPlan(len(bank), identities_per_unit(recipe))
    run = {
        "recipe_hash": recipe_hash,
        "bank_sha256": bank.sha256(),
        "num_identities": plan.num_identities,
        "identities_per_unit": plan.identities_per_unit,
        "num_units": plan.num_units,
        "facesynth_version": __version__,
    }
    layout.atomic_write_json(out / layout.RUN, run)  # written last: its presence means 'prepared'
    written = read_run(out)
    if written is None or written["bank_sha256"] != run["bank_sha256"]:
        raise FacesynthError(
            f"another worker prepared {out} with a different identity bank (bank building is not "
            "deterministic here); prepare once before starting the workers, e.g. `facesynth identities`"
        )
    return run


def _being_prepared(out: Path, entries: set[str], recipe_hash: str) -> bool:
    """Whether ``out`` holds only what ``prepare`` writes before run.json, for this same recipe."""
    own = {layout.RECIPE, layout.BANK}
    temporary = tuple(f".{name}." for name in (*own, layout.RUN))  # atomic writes in flight
    if any(e not in own and not e.startswith(temporary) for e in entries):
        return False
    if layout.RECIPE not in entries:
        return layout.BANK not in entries  # a bank without its recipe is of unknown origin
    try:
        return load_recipe(out / layout.RECIPE).content_hash() == recipe_hash
    except UserInputError:
        return False


def clear_output(out: Path) -> None:
    """Remove everything in ``out`` (a run of another recipe, replaced with ``--overwrite``)."""
    for child in out.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def _build_or_load_bank(recipe: Recipe, out: Path, progress: bool) -> Any:
    from facesynth.identity.bank import IdentityBank, build_bank

    path = out / layout.BANK
    if path.exists():
        return IdentityBank.load(path)
    options = recipe.bank_options()
    bank = build_bank(options, recipe.seed, progress=progress)  # a prebuilt `bank:` is checked, not trusted
    bank.save(path)
    return bank


def _check_dims(recipe: Recipe, dim: int) -> None:
    assert recipe.generator is not None
    from facesynth.generators import GENERATORS

    expected = GENERATORS.get(recipe.generator.name).dim
    if expected != dim:
        raise UserInputError(
            f"the identity bank has {dim}-d vectors but generator '{recipe.generator.name}' takes {expected}-d"
        )


_WORKERS: dict[tuple[Path, str, str | None], Worker] = {}  # (folder, recipe.yaml text, device)


def load_worker(out: Path, device: str | None = None) -> Worker:
    """Build (once per process) the generator, filters and bank view for an output folder."""
    run = read_run(out)
    if run is None:
        raise UserInputError(f"{out} is not a prepared facesynth output (no {layout.RUN})")
    key = (Path(out).resolve(), (Path(out) / layout.RECIPE).read_text(), device)  # with its execution keys
    if key in _WORKERS:
        return _WORKERS[key]
    from facesynth.filters import load_filter
    from facesynth.generators import load_generator
    from facesynth.identity import VARIATIONS
    from facesynth.identity.bank import IdentityBank

    recipe = load_recipe(out / layout.RECIPE)
    bank = IdentityBank.load(out / layout.BANK)
    if bank.sha256() != run["bank_sha256"]:
        raise UserInputError(f"{out / layout.BANK} does not match the bank this run was planned with")
    assert recipe.generator is not None
    options = recipe.generator.options
    if device is not None:
        options["device"] = device
    generator = load_generator(recipe.generator.name, **options)
    if generator.dim != bank.dim:
        raise UserInputError(
            f"the identity bank has {bank.dim}-d vectors but the generator takes {generator.dim}-d"
        )
    check_input_scale(generator, bank.vectors, out / layout.BANK)
    worker = Worker(
        out=Path(out),
        recipe=recipe,
        bank_vectors=bank.vectors,
        plan=UnitPlan(run["num_identities"], run["identities_per_unit"]),
        generator=generator,
        filters=[load_filter(f.name, **f.options) for f in recipe.filters],
        variation=VARIATIONS.create(recipe.variations.vary.name, **recipe.variations.vary.options),
    )
    _WORKERS[key] = worker
    return worker


def check_input_scale(generator: Any, vectors: np.ndarray, path: Path) -> None:
    """Refuse a bank of unit vectors for a generator that takes raw (un-normalised) features."""
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    if generator.input_scale == "raw" and len(norms) and np.allclose(norms, 1.0, atol=1e-3):
        raise UserInputError(
            f"{path}: the identity bank holds unit vectors but generator '{generator.name}' takes raw, "
            "un-normalised features (their norm matters); draw the bank with a sampler that keeps the "
            "scale (gaussian with normalize: false) or use a bank of raw features"
        )


def pending_units(out: Path, units: Iterable[int] | None = None) -> list[int]:
    """Units (of ``units``, default all) whose done-marker is not written yet."""
    run = read_run(out)
    assert run is not None
    candidates = range(run["num_units"]) if units is None else units
    return [u for u in candidates if not layout.unit_done_marker(out, u).exists()]


def finished_units(out: Path) -> list[int]:
    """Units whose done-marker is written."""
    run = read_run(out)
    assert run is not None
    return [u for u in range(run["num_units"]) if layout.unit_done_marker(out, u).exists()]


def clean_partial_files(out: Path, units: Iterable[int] | None = None) -> None:
    """Remove temporary files left by killed processes; they were never visible under final names.

    A file of a process still running on this host stays. With ``units``, only those units' files,
    and not those of other hosts: other workers may be writing theirs right now (finalize removes
    whatever is left with ``units/``).
    """
    patterns = [".*.tmp-*"] if units is None else [f".unit-{u:05d}.*.tmp-*" for u in units]
    for pattern in patterns:
        for tmp in (Path(out) / layout.UNITS).glob(pattern):
            if not layout.written_by_live_process(tmp, other_hosts_alive=units is not None):
                tmp.unlink(missing_ok=True)


def unit_failed_marker(out: Path, unit: int) -> Path:
    """Written when a unit raises, for ``facesynth info``; removed when the unit later succeeds."""
    return layout.unit_stem(out, unit).with_suffix(".failed.json")


def run_units(out: Path, units: Iterable[int], progress: bool = True, device: str | None = None) -> None:
    """Run the given units (skipping finished ones) in this process, with a progress bar."""
    units = pending_units(out, units)
    if not units:
        return
    worker = load_worker(out, device)
    done = {
        u: layout.read_json(layout.unit_done_marker(out, u)).get("made_with") for u in finished_units(out)
    }
    check_mixable(
        {**done, "of this run": made_with(worker.generator)},
        "set generator.dtype / generator.batch_size / generator.batch_invariant to match the finished units "
        f"(or delete their done-markers in {out / layout.UNITS} to remake them)",
    )
    total = sum(len(worker.plan.identities(u)) for u in units)
    bar = tqdm(total=total, unit="id", desc="identities", disable=not progress, dynamic_ncols=True)
    kept = generated = 0

    def on_round(identities_done: int, images_kept: int, images_generated: int) -> None:
        nonlocal kept, generated
        kept, generated = kept + images_kept, generated + images_generated  # of the same finished identities
        bar.set_postfix(images=kept, pass_rate=f"{kept / max(generated, 1):.0%}", refresh=False)
        bar.update(identities_done)

    def on_unit(result: UnitResult) -> None:
        unit_failed_marker(out, result.unit).unlink(missing_ok=True)

    def on_failure(failed: list[int], exc: BaseException) -> None:
        error = {"error": f"{exc.__class__.__name__}: {exc}", "host": platform.node(), "pid": os.getpid()}
        for unit in failed:
            layout.atomic_write_json(unit_failed_marker(out, unit), {"unit": unit, **error})

    with bar:
        run_units_overlapped(worker, units, on_round, on_unit, on_failure)
