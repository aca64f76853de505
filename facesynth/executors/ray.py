"""Run units on a Ray cluster: one actor per GPU (or per few CPUs), each holding one loaded model.

The driver prepares the output (one identity bank), then hands pending units to idle actors one at
a time, so fast and slow workers balance themselves. An actor that dies (a lost node) is restarted
and its unit retried: a unit's files appear only under final names, so a retry cannot duplicate it.
The output folder must be a shared folder mounted at the same path on every node.
Needs ``pip install "facesynth[ray]"``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import Field
from tqdm.auto import tqdm

from facesynth.errors import FacesynthError, UserInputError
from facesynth.finalize import finalize, is_finalized
from facesynth.prepare import prepare
from facesynth.recipe import Recipe
from facesynth.registry import StrictOptions
from facesynth.runner import clean_partial_files, pending_units, run_units


class UnitActor:
    """Holds one worker (model, filters, bank) for its lifetime and runs units on request."""

    def __init__(self, out: str, device: str | None, torch_threads: int | None) -> None:
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.out = Path(out)
        self.device = device

    def run(self, unit: int) -> tuple[int, str]:
        run_units(self.out, [unit], progress=False, device=self.device)
        return unit, f"{os.uname().nodename}:{os.getpid()}"


class RayExecutor:
    class Options(StrictOptions):
        address: str | None = Field(
            None, description="Ray cluster to join (default: $RAY_ADDRESS, else start a local one)"
        )
        workers: int | None = Field(None, ge=1, description="actors (default: as many as the cluster fits)")
        num_gpus: float = Field(0, ge=0, description="GPUs per actor; 1 = one model per GPU")
        num_cpus: float = Field(1, gt=0, description="CPUs per actor")
        torch_threads: int | None = Field(
            None, ge=1, description="torch threads per actor (default: num_cpus)"
        )
        max_retries: int = Field(2, ge=0, description="restarts of a dead actor, retries of its unit")
        local_cpus: int | None = Field(None, ge=1, description="CPUs of a local cluster started here")

    def __init__(self, options: Options) -> None:
        self.options = options

    def execute(self, recipe: Recipe, out: Path, overwrite: bool = False, progress: bool = True) -> Any:
        try:
            import ray
        except ImportError:
            raise UserInputError('the ray executor needs Ray: pip install "facesynth[ray]"') from None

        run = prepare(recipe, out, overwrite, progress)
        if is_finalized(out):
            return finalize(out)
        clean_partial_files(out)
        pending = pending_units(out, range(run["num_units"]))
        if pending:
            started_here = not ray.is_initialized()
            if started_here:
                address = self.options.address or os.environ.get("RAY_ADDRESS")
                ray.init(
                    address=address,
                    num_cpus=None if address else self.options.local_cpus,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
            try:
                self._run(ray, out, pending, progress)
            finally:
                if started_here:
                    ray.shutdown()
        return finalize(out)

    def _actor_count(self, ray: Any, pending: int) -> int:
        if self.options.workers:
            return min(self.options.workers, pending)
        resources = ray.cluster_resources()
        if self.options.num_gpus > 0:
            fits = int(resources.get("GPU", 0) // self.options.num_gpus)
            if fits == 0:
                raise UserInputError(
                    f"the Ray cluster has no GPU for num_gpus={self.options.num_gpus}; set executor.num_gpus: 0"
                )
        else:
            fits = int(resources.get("CPU", 1) // self.options.num_cpus)
        return max(1, min(fits, pending))

    def _run(self, ray: Any, out: Path, pending: list[int], progress: bool) -> None:
        o = self.options
        actor_class = ray.remote(
            num_cpus=o.num_cpus,
            num_gpus=o.num_gpus,
            max_restarts=o.max_retries,
            max_task_retries=o.max_retries,
        )(UnitActor)
        # Ray sets CUDA_VISIBLE_DEVICES per actor, so its GPU is always cuda:0 inside the actor.
        device = "cuda" if o.num_gpus > 0 else None
        threads = o.torch_threads or max(1, int(o.num_cpus))
        actors = [
            actor_class.remote(str(out), device, threads) for _ in range(self._actor_count(ray, len(pending)))
        ]

        queue, running = deque(pending), {}

        def give(actor: Any) -> None:
            unit = queue.popleft()
            running[actor.run.remote(unit)] = (actor, unit)

        for actor in actors:
            if queue:
                give(actor)
        failures: list[tuple[int, str]] = []
        workers: set[str] = set()
        with tqdm(total=len(pending), unit="unit", desc="units", disable=not progress) as bar:
            while running:
                (ref,), _ = ray.wait(list(running), num_returns=1)
                actor, unit = running.pop(ref)
                try:
                    workers.add(ray.get(ref)[1])
                    bar.update(1)
                except ray.exceptions.RayActorError as exc:  # dead after all its restarts: retire it
                    failures.append((unit, f"worker lost: {exc.__class__.__name__}"))
                    continue
                except ray.exceptions.RayTaskError as exc:
                    failures.append((unit, f"{exc.cause.__class__.__name__}: {exc.cause}"))
                if queue:
                    give(actor)
        failures.extend((unit, "no worker left to run it") for unit in queue)
        print(
            f"facesynth: ray ran {len(pending) - len(failures)} unit(s) on {len(workers)} worker(s)",
            file=sys.stderr,
            flush=True,
        )
        if failures:
            unit, why = failures[0]
            raise FacesynthError(
                f"{len(failures)} unit(s) failed (first: unit {unit}: {' '.join(why.split())}); "
                "finished units are kept, run the same command again to retry"
            )
