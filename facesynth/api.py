"""The Python API: ``facesynth.run``, ``facesynth.regenerate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from facesynth import layout
from facesynth.errors import UserInputError
from facesynth.prepare import output_dir
from facesynth.recipe import Recipe, load_recipe


def run(
    recipe: str | Path | dict[str, Any] | Recipe,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    executor: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Make (or resume) the dataset described by ``recipe`` in ``out``; returns its stats."""
    from facesynth.executors import EXECUTORS

    recipe = load_recipe(recipe, overrides)
    spec = recipe.executor
    name = executor or spec.name
    options = spec.options if name == spec.name else {}
    runner = EXECUTORS.create(name, **options)
    return runner.execute(recipe, output_dir(recipe, out), overwrite=overwrite, progress=progress)


def regenerate(out: str | Path, identity: int, attempt: int, exact: bool = True) -> Image.Image:
    """Regenerate one image of a dataset from its recipe, bank, identity and attempt alone.

    Returns the generator's output (before alignment). It is bit-identical to the image the dataset was
    made from when this machine makes pixels under the conditions the image's unit recorded (same
    device and GPU model, dtype, facesynth/torch/CUDA/diffusers/transformers versions) and the unit was
    made batch-invariant (or in batches of one): see ``facesynth.conditions``. Otherwise it raises
    ``UserInputError`` naming the differences; ``exact=False`` regenerates anyway, with a warning.
    """
    import warnings

    from facesynth.conditions import differences, made_with
    from facesynth.generators import load_generator
    from facesynth.identity import VARIATIONS
    from facesynth.identity.bank import IdentityBank
    from facesynth.rounds import UnitPlan
    from facesynth.worker import Worker

    out = Path(out)
    recipe = load_recipe(out / layout.RECIPE)
    bank = IdentityBank.load(out / layout.BANK)
    assert recipe.generator is not None
    worker = Worker(
        out=out,
        recipe=recipe,
        bank_vectors=bank.vectors,
        plan=UnitPlan(len(bank), 1),
        generator=load_generator(recipe.generator.name, **recipe.generator.options),
        filters=[],  # only the generator's output is regenerated
        variation=VARIATIONS.create(recipe.variations.vary.name, **recipe.variations.vary.options),
    )
    found = differences(_recorded_conditions(out, identity), made_with(worker.generator))
    if found:
        message = f"image ({identity}, {attempt}) of {out} cannot be regenerated exactly here: " + "; ".join(
            found
        )
        if exact:
            raise UserInputError(f"{message}; pass exact=False to regenerate it anyway")
        warnings.warn(message, stacklevel=2)
    (candidate,) = worker.candidates([(identity, attempt)])
    worker.render([candidate])
    assert candidate.image is not None
    return candidate.image


def _recorded_conditions(out: Path, identity: int) -> dict[str, Any] | None:
    """What the unit of ``identity`` was made with: from its done-marker, or from stats.json once finalized."""
    from facesynth.prepare import read_run

    run = read_run(out)
    if run is None:
        raise UserInputError(f"{out} is not a facesynth output (no {layout.RUN})")
    unit = identity // run["identities_per_unit"]
    marker = layout.unit_done_marker(out, unit)
    if marker.exists():
        return layout.read_json(marker).get("made_with")
    if (out / layout.STATS).exists():
        for group in layout.read_json(out / layout.STATS).get("made_with") or []:
            if unit in group["units"]:
                return group["made_with"]
    return None
