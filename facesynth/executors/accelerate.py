"""Run units on every process of an ``accelerate launch`` or ``torchrun`` job, on one or many nodes.

The main process prepares the output (one identity bank for everybody), all processes wait at a
barrier, list the pending units, and take every ``world_size``-th of them by rank. Each process
writes its own unit files; after a second barrier the main process finalizes. The output folder
must be the same shared folder on every node.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import Field

from facesynth import layout
from facesynth.errors import FacesynthError
from facesynth.finalize import finalize, is_finalized
from facesynth.prepare import prepare, read_run
from facesynth.recipe import Recipe
from facesynth.registry import StrictOptions
from facesynth.runner import clean_partial_files, pending_units, run_units


class AccelerateExecutor:
    class Options(StrictOptions):
        torch_threads: int | None = Field(None, ge=1, description="torch CPU threads per process")
        barrier_timeout_hours: float = Field(
            24, gt=0, description="how long a finished process waits at a barrier for the slowest one"
        )

    def __init__(self, options: Options) -> None:
        self.options = options

    def execute(self, recipe: Recipe, out: Path, overwrite: bool = False, progress: bool = True) -> Any:
        import torch
        from accelerate import PartialState

        if self.options.torch_threads:
            torch.set_num_threads(self.options.torch_threads)
        # Without CUDA a bare PartialState() under torchrun is a world of one per rank: every rank
        # would run every unit. cpu=True makes it a gloo group of the real size.
        state = PartialState(
            cpu=not torch.cuda.is_available(),
            timeout=timedelta(hours=self.options.barrier_timeout_hours),
        )
        rank, world = state.process_index, state.num_processes

        error: BaseException | None = None
        if state.is_main_process:
            try:
                prepare(recipe, out, overwrite, progress)
                if not is_finalized(out):
                    clean_partial_files(out)  # before the barrier: nobody is writing yet
            except BaseException as exc:  # reach the barrier anyway, or the other ranks wait forever
                error = exc
        state.wait_for_everyone()
        if error is not None:
            raise error
        run = read_run(out)
        if run is None or run["recipe_hash"] != recipe.content_hash():
            raise FacesynthError(
                f"process {rank}: {out} was not prepared for this recipe by the main process; "
                "every node must see the same output folder and the same recipe (see the main process's error)"
            )

        if not is_finalized(out):
            pending = pending_units(out)
            # Everyone lists the pending units before anyone finishes one, so all ranks split the same list.
            state.wait_for_everyone()
            mine = pending[rank::world]
            device = str(state.device) if state.device.type == "cuda" else None
            run_units(out, mine, progress and state.is_main_process, device)
            print(f"facesynth: process {rank} of {world} ran units {mine}", file=sys.stderr, flush=True)
            state.wait_for_everyone()
            if state.is_main_process:
                finalize(out)
            state.wait_for_everyone()
        return layout.read_json(out / layout.STATS)
