"""Run every unit in this process, one after the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facesynth.finalize import finalize, is_finalized
from facesynth.prepare import prepare
from facesynth.recipe import Recipe
from facesynth.registry import StrictOptions
from facesynth.runner import clean_partial_files, run_units


class LocalExecutor:
    class Options(StrictOptions):
        device: str | None = None  # overrides generator.device for this process

    def __init__(self, options: Options) -> None:
        self.options = options

    def execute(self, recipe: Recipe, out: Path, overwrite: bool = False, progress: bool = True) -> Any:
        run = prepare(recipe, out, overwrite, progress)
        if is_finalized(out):
            return finalize(out)
        clean_partial_files(out)
        run_units(out, range(run["num_units"]), progress, self.options.device)
        return finalize(out)
