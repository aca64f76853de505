"""Run units as a Slurm job array, then finalize in a job that depends on it.

Inside an array task (``SLURM_ARRAY_TASK_ID`` is set), ``facesynth run`` prepares the output if no
task did yet (tasks may race: preparing is deterministic and atomic, so they agree on one bank),
runs the units ``u`` with ``u % task_count == task_index`` that are not done yet, and exits; it does
not finalize. Outside Slurm it prepares the output once, writes the two batch scripts into
``OUT/.slurm/`` and submits them with ``sbatch`` (the finalize job waits for the array with
``--dependency=afterok``). A task that died is rerun with ``sbatch --array=K`` on the same script:
the script exports ``FACESYNTH_SLURM_TASKS`` (the array's size), so the rerun task ``K`` runs the
units of task ``K``, not every unit.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import Field

from facesynth import layout
from facesynth.errors import FacesynthError, UserInputError
from facesynth.finalize import finalize, is_finalized
from facesynth.prepare import prepare
from facesynth.recipe import Recipe
from facesynth.registry import StrictOptions
from facesynth.runner import clean_partial_files, pending_units, run_units

SCRIPTS = ".slurm"


TASKS_VARIABLE = "FACESYNTH_SLURM_TASKS"


def array_task(environ: dict[str, str] | os._Environ[str] = os.environ) -> tuple[int, int] | None:
    """(index, count) of this Slurm array task; None outside an array.

    With ``FACESYNTH_SLURM_TASKS`` (set by our array script) the index is the task id and the count
    that variable, so ``sbatch --array=K`` reruns task K alone. Without it, Slurm's own view of the
    array: a rerun of one task of a bigger array cannot be told apart, so it is refused.
    """
    if "SLURM_ARRAY_TASK_ID" not in environ:
        return None
    task = int(environ["SLURM_ARRAY_TASK_ID"])
    if environ.get(TASKS_VARIABLE):
        first, count = 0, int(environ[TASKS_VARIABLE])
    else:
        first = int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
        count = int(environ.get("SLURM_ARRAY_TASK_COUNT", 0))
        if first > 0 and count == 1:
            raise UserInputError(
                f"Slurm array task {task} runs alone (--array={task}): set {TASKS_VARIABLE} to the size of "
                "the original array so it runs only its own units"
            )
    if count < 1 or not 0 <= task - first < count:
        raise UserInputError(
            f"Slurm array task {task} is outside 0..{count - 1} (SLURM_ARRAY_TASK_MIN={first}, "
            f"SLURM_ARRAY_TASK_COUNT={count}, {TASKS_VARIABLE}={environ.get(TASKS_VARIABLE)}); "
            "submit with a contiguous --array=0-N"
        )
    return task - first, count


def task_units(num_units: int, index: int, count: int) -> list[int]:
    """The units of array task ``index`` of ``count``: a fixed stride, whatever is already done."""
    return list(range(index, num_units, count))


class SlurmExecutor:
    class Options(StrictOptions):
        tasks: int | None = Field(
            None, ge=1, description="array tasks to submit (default: one per unit, max 64)"
        )
        partition: str | None = None
        gpus_per_task: int = Field(0, ge=0)
        cpus_per_task: int = Field(4, ge=1)
        mem: str | None = Field(None, description="memory per task, e.g. 32G")
        time: str = Field("24:00:00", description="time limit per task")
        sbatch_args: list[str] = Field(
            default_factory=list, description='extra #SBATCH lines, e.g. ["--account=x"]'
        )
        submit: bool = Field(
            True, description="outside Slurm: submit with sbatch (false: only write the scripts)"
        )
        torch_threads: int | None = Field(
            None, ge=1, description="torch threads per task (default: cpus_per_task)"
        )

    def __init__(self, options: Options) -> None:
        self.options = options

    def execute(self, recipe: Recipe, out: Path, overwrite: bool = False, progress: bool = True) -> Any:
        task = array_task()
        if task is None:
            return self.submit(recipe, out, overwrite, progress)
        if overwrite:
            raise UserInputError(
                "--overwrite cannot be used inside a Slurm array task (tasks would delete each other's work); "
                "empty the output folder before submitting"
            )
        import torch

        torch.set_num_threads(self.options.torch_threads or self.options.cpus_per_task)
        run = prepare(recipe, out, False, progress)
        if is_finalized(out):
            return layout.read_json(out / layout.STATS)
        index, count = task
        mine = task_units(run["num_units"], index, count)
        clean_partial_files(out, mine)  # only this task's: the other tasks may be writing theirs now
        run_units(out, mine, progress)
        left = len(pending_units(out))
        print(
            f"facesynth: slurm task {index} of {count} finished units {mine}; {left} unit(s) of the run "
            f"not done yet{'' if left else f'; run: facesynth finalize {out}'}",
            file=sys.stderr,
            flush=True,
        )
        return {}

    # ------------------------------------------------------------------ submission

    def scripts(self, recipe: Recipe, out: Path, num_units: int) -> dict[str, str]:
        """The array and finalize batch scripts for an output folder (already prepared)."""
        o = self.options
        tasks = min(o.tasks or min(num_units, 64), num_units)
        logs = out / SCRIPTS / "logs"
        python = shlex.quote(sys.executable)
        # --executor would replace the recipe's executor options by defaults: only name it if needed
        executor = "" if recipe.executor.name == "slurm" else " --executor slurm"
        common = [f"#SBATCH --time={o.time}", *(f"#SBATCH {arg}" for arg in o.sbatch_args)]
        if o.partition:
            common.append(f"#SBATCH --partition={o.partition}")
        array = [
            "#!/bin/bash",
            f"#SBATCH --job-name=facesynth-{recipe.name}",
            f"#SBATCH --array=0-{tasks - 1}",
            f"#SBATCH --cpus-per-task={o.cpus_per_task}",
            *([f"#SBATCH --gres=gpu:{o.gpus_per_task}"] if o.gpus_per_task else []),
            *([f"#SBATCH --mem={o.mem}"] if o.mem else []),
            f"#SBATCH --output={logs}/%A_%a.log",
            *common,
            f"cd {shlex.quote(os.getcwd())}",
            # so that `sbatch --array=K` reruns task K's units only (set it to 1 to run every pending unit)
            f"export {TASKS_VARIABLE}=${{{TASKS_VARIABLE}:-{tasks}}}",
            f"exec {python} -m facesynth.cli run {shlex.quote(str(out / layout.RECIPE))} "
            f"--out {shlex.quote(str(out))}{executor} --no-progress",
        ]
        final = [
            "#!/bin/bash",
            f"#SBATCH --job-name=facesynth-{recipe.name}-finalize",
            "#SBATCH --cpus-per-task=2",
            f"#SBATCH --output={logs}/%j-finalize.log",
            *common,
            f"exec {python} -m facesynth.cli finalize {shlex.quote(str(out))}",
        ]
        return {"array.sbatch": "\n".join(array) + "\n", "finalize.sbatch": "\n".join(final) + "\n"}

    def submit(self, recipe: Recipe, out: Path, overwrite: bool, progress: bool) -> Any:
        """Prepare once here, write the batch scripts, and submit the array and its finalize job."""
        run = prepare(recipe, out, overwrite, progress)
        if is_finalized(out):
            return finalize(out)
        folder = out / SCRIPTS
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        for name, text in self.scripts(recipe, out, run["num_units"]).items():
            layout.atomic_write_bytes(folder / name, text.encode())
        array, final = folder / "array.sbatch", folder / "finalize.sbatch"
        if not self.options.submit:
            print(
                f"facesynth: wrote {array} and {final}; submit them with:\n"
                f"  JOB=$(sbatch --parsable {array})\n"
                f"  sbatch --dependency=afterok:$JOB {final}",
                file=sys.stderr,
            )
            return {}
        if shutil.which("sbatch") is None:
            raise UserInputError(
                f"not inside a Slurm array task and `sbatch` is not on PATH; wrote {array} and {final}: "
                "submit them from a Slurm login node (see docs/executors.md)"
            )
        job = _sbatch([str(array)])
        final_job = _sbatch([f"--dependency=afterok:{job}", str(final)])
        print(
            f"facesynth: submitted array job {job} and finalize job {final_job}; "
            f"follow with: facesynth info {out}",
            file=sys.stderr,
        )
        return {}


def _sbatch(args: list[str]) -> str:
    result = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise FacesynthError(f"sbatch failed: {' '.join(result.stderr.split()) or result.returncode}")
    return result.stdout.strip().split(";")[0]  # --parsable prints "jobid[;cluster]"
