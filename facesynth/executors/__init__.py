"""Executors decide where units run; the work itself is ``facesynth.runner.run_units``.

An executor is a component (``Options`` + constructor) with one method,
``execute(recipe, out, overwrite, progress)``, which prepares the output folder, gets every
pending unit done exactly once, and finalizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from facesynth.recipe import Recipe
from facesynth.registry import Registry


class Executor(Protocol):
    def execute(self, recipe: Recipe, out: Path, overwrite: bool = False, progress: bool = True) -> Any: ...


EXECUTORS: Registry[Executor] = Registry(
    "executor",
    {
        "local": "facesynth.executors.local:LocalExecutor",
        "accelerate": "facesynth.executors.accelerate:AccelerateExecutor",
        "ray": "facesynth.executors.ray:RayExecutor",
        "slurm": "facesynth.executors.slurm:SlurmExecutor",
    },
)
