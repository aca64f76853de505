"""``facesynth filter``: run a recipe's filters over an existing dataset made by any tool.

The input (an image folder with one subfolder per identity, or a parquet dataset with image and
label columns) is read in groups of identities; each group is a unit, filtered and written exactly
like a generated unit, then finalized into a facesynth dataset with the same writer, card and stats.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from facesynth import __version__, layout
from facesynth.errors import UserInputError
from facesynth.filtering import UnitFiltering
from facesynth.finalize import finalize, is_finalized
from facesynth.interfaces import Candidate
from facesynth.prepare import clear_output, read_run
from facesynth.recipe import Recipe, load_recipe
from facesynth.rounds import UnitPlan
from facesynth.runner import clean_partial_files
from facesynth.unit_writer import write_unit
from facesynth.worker import Worker

BATCH = 16  # candidates handed to the filter stage at once; the filters' groups do not depend on it


def _groups(source: Path) -> Iterator[tuple[str, list[tuple[str, Any]]]]:
    """(identity name, [(image name, image or ``Unreadable``)]) of the input, one identity at a time."""
    from facesynth.filters.sources import iter_source

    return iter_source(source)


def _chunks(iterable: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(islice(iterable, size)):
        yield chunk


def _filter_unit(
    worker: Worker,
    unit: int,
    groups: list[tuple[str, list[tuple[str, Any]]]],
    minimum: int,
    batch_size: int = BATCH,
) -> int:
    from facesynth.filters.sources import Unreadable

    started = time.perf_counter()
    start = unit * worker.plan.identities_per_unit
    identities = range(start, start + len(groups))
    state = UnitFiltering(worker, identities)
    candidates = []
    for offset, (identity_name, images) in enumerate(groups):
        for index, (image_name, image) in enumerate(images):
            unreadable = image.reason if isinstance(image, Unreadable) else None
            candidate = Candidate(
                identity=start + offset,
                attempt=index,
                seed=-1,
                vector=np.zeros(0, np.float32),
                variation_cosine=math.nan,
                image=None if unreadable else image,
                source=f"{identity_name}/{image_name}",
            )
            if unreadable:
                candidate.reject("input", f"unreadable image: {unreadable}")
            candidates.append(candidate)
    state.expect([(c.identity, c.attempt) for c in candidates])
    for batch_start in range(0, len(candidates), batch_size):
        state.consume(candidates[batch_start : batch_start + batch_size])
    kept = [i for i in identities if len(state.rows[i]) >= minimum]
    is_kept = set(kept)
    record = [
        {
            "identity": i,
            "name": groups[i - start][0],
            "images_kept": len(state.rows[i]) if i in is_kept else 0,
            "attempts": len(groups[i - start][1]),
            "drop_reason": None
            if i in is_kept
            else f"{len(state.rows[i])} images accepted, fewer than {minimum}",
        }
        for i in identities
    ]
    write_unit(worker, unit, state, kept, record, generated=len(candidates), started=started)
    return len(candidates)


def filter_dataset(
    source: str | Path,
    recipe: str | Path | dict[str, Any] | Recipe,
    out: str | Path,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    batch_size: int = BATCH,
) -> dict[str, Any]:
    """Filter ``source`` with the recipe's filters into a facesynth dataset at ``out``; returns stats.

    ``overwrite`` replaces an output made from another recipe or input (finished or not).
    ``batch_size`` only sets how many candidates are handed to the filter stage at once.
    """
    from facesynth.filters import load_filter

    source, out = Path(source), Path(out).resolve()
    if not source.exists():
        raise UserInputError(f"input dataset not found: {source}")
    recipe = load_recipe(recipe, overrides, need_generation=False)
    if not recipe.filters:
        raise UserInputError("the recipe has no filters: nothing to do")
    recipe_hash = recipe.content_hash()
    out.mkdir(parents=True, exist_ok=True)
    if out == source.resolve() or out in source.resolve().parents:
        raise UserInputError(f"--out {out} holds the input {source}; choose another --out")
    run = read_run(out)
    if run is not None and (run["recipe_hash"] != recipe_hash or run.get("source") != str(source)):
        if not overwrite:
            raise UserInputError(
                f"{out} holds a run of a different recipe or input; pass --overwrite or choose another --out"
            )
        clear_output(out)  # its units and dataset were made by the other recipe: none of it is reused
        run = None
    if run is None and any(out.iterdir()):
        if not overwrite:
            raise UserInputError(f"{out} is not empty and is not a facesynth output; choose another --out")
        clear_output(out)
    if run is not None and is_finalized(out):
        return finalize(out)
    per_unit = recipe.output.identities_per_unit or 1000
    run = {
        "recipe_hash": recipe_hash,
        "source": str(source),
        "identities_per_unit": per_unit,
        "num_units": None,
        "num_identities": None,
        "bank_sha256": None,
        "facesynth_version": __version__,
    }
    layout.atomic_write_bytes(out / layout.RECIPE, yaml.safe_dump(recipe.to_dict(), sort_keys=False).encode())
    layout.atomic_write_json(out / layout.RUN, run)
    clean_partial_files(out)

    filters = [load_filter(f.name, **f.options) for f in recipe.filters]
    worker = Worker(out, recipe, np.zeros((0, 512), np.float32), UnitPlan(0, per_unit), None, filters, None)  # type: ignore[arg-type]
    minimum = recipe.variations.min_images_per_identity if "variations" in recipe.model_fields_set else 1
    units = identities = 0
    with tqdm(unit="img", desc="filtering", disable=not progress, dynamic_ncols=True) as bar:
        try:
            for unit, groups in enumerate(_chunks(_groups(source), per_unit)):
                units, identities = unit + 1, identities + len(groups)
                if not layout.unit_done_marker(out, unit).exists():
                    bar.update(_filter_unit(worker, unit, groups, minimum or 1, batch_size))
        finally:
            worker.encoder.close()
    if units == 0:
        raise UserInputError(f"no identities found in {source}")
    layout.atomic_write_json(out / layout.RUN, {**run, "num_units": units, "num_identities": identities})
    return finalize(out)
