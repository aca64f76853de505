"""The Python API: ``facesynth.run``, ``facesynth.regenerate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from facesynth import layout
from facesynth.recipe import Recipe, load_recipe
from facesynth.runner import output_dir


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


def regenerate(out: str | Path, identity: int, attempt: int) -> Image.Image:
    """Regenerate one image of a dataset from its recipe, bank, identity and attempt alone.

    Returns the generator's output (before alignment), exactly as it was made on the same
    software and hardware.
    """
    from facesynth.generators import load_generator
    from facesynth.identity import VARIATIONS
    from facesynth.identity.bank import IdentityBank
    from facesynth.pipeline import UnitPlan, Worker

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
    (candidate,) = worker.candidates([(identity, attempt)])
    worker.render([candidate])
    assert candidate.image is not None
    return candidate.image
