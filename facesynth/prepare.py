"""Preparing an output folder: the resolved recipe, the identity bank and the unit plan (run.json)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import yaml

from facesynth import __version__, layout
from facesynth.errors import FacesynthError, UserInputError
from facesynth.recipe import Recipe, load_recipe
from facesynth.rounds import UnitPlan

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

    generator = GENERATORS.get(recipe.generator.name)
    return generator.image_size(GENERATORS.parse_options(recipe.generator.name, recipe.generator.options))


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
    check_generator_weights(recipe)  # in seconds, before a bank that may take minutes
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


def check_generator_weights(recipe: Recipe) -> None:
    """Raise ``ModelNotFoundError`` when the generator's weights are missing, without loading them."""
    assert recipe.generator is not None
    from facesynth.generators import GENERATORS

    name = recipe.generator.name
    GENERATORS.get(name).check_weights(GENERATORS.parse_options(name, recipe.generator.options))


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
