"""Worker processes for the benchmarks: started together, each timing only what follows a shared barrier."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any


def run_processes(target: Callable[..., None], args_per_process: Sequence[tuple]) -> list[Any]:
    """Run ``target(*args, barrier, results)`` in one spawned process per ``args``; what each put in ``results``.

    Each process loads what it needs, waits at ``barrier`` (so all start timing together), then
    puts one report in ``results``.
    """
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(args_per_process)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for args in args_per_process]
    for proc in procs:
        proc.start()
    reports = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"a benchmark process exited with {proc.exitcode}")
    return reports
