"""Running units in one process: load the worker once, then generate, filter and write units."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from facesynth import layout
from facesynth.conditions import check_mixable, made_with
from facesynth.errors import UserInputError
from facesynth.overlap import run_units_overlapped
from facesynth.prepare import read_run
from facesynth.recipe import load_recipe
from facesynth.rounds import UnitPlan
from facesynth.unit_writer import UnitResult
from facesynth.worker import Worker

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

    worker.encoder.start()  # the encoder processes (if any) start while the first batch renders
    with bar:
        try:
            run_units_overlapped(worker, units, on_round, on_unit, on_failure)
        finally:
            # Stopped here, not at exit: a multiprocessing child joins its children before exit hooks run.
            worker.encoder.close()
