"""Threads and overlap: generating on the main thread while one thread filters and one writes.

Batches that mix identities are generated on the main thread while a single worker thread filters
and encodes the previous batch; two units are in flight, so while one waits for its round's last
batch to be filtered the other generates, and a writer thread writes a finished unit's files, so
the model waits neither for the CPU nor for the disk.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from facesynth.rounds import UnitRounds
from facesynth.unit_writer import UnitResult, write_generated_unit
from facesynth.worker import Worker


def run_units_overlapped(
    worker: Worker,
    units: Sequence[int],
    on_round: Callable[[int, int, int], None] | None = None,
    on_unit: Callable[[UnitResult], None] | None = None,
    on_failure: Callable[[list[int], BaseException], None] | None = None,
) -> None:
    """Generate, filter and write ``units``, two in flight at a time.

    The model generates for the oldest unit that has work; while that unit waits for the filters
    to finish a round (to know what to ask for next), the next unit generates, so the model does
    not wait for the CPU. One filter thread consumes batches in submission order; a writer thread
    writes each finished unit (parquet, fsync, done-marker last) while the model goes on. Once a
    unit has failed, no new unit starts, the units in flight are finished (their work is kept),
    then the first error is raised.
    """
    todo = deque(units)
    active: list[UnitRounds] = []
    writing: deque[tuple[Future[UnitResult], UnitRounds]] = deque()
    failures: list[tuple[UnitRounds, Exception]] = []
    batch_size = max(1, worker.generator.batch_size)
    queued: deque[tuple[Future[None], UnitRounds]] = deque()

    def fail(run: UnitRounds, exc: Exception) -> None:
        failures.append((run, exc))
        if run in active:
            active.remove(run)
        todo.clear()

    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="facesynth-filter") as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="facesynth-writer") as writer,
    ):
        while todo or active or writing:
            # Two units generate while at most two finished ones wait for the disk (bounded memory).
            while len(active) < 2 and len(writing) < 2 and todo:
                active.append(UnitRounds(worker, todo.popleft()))
            run, jobs = None, []
            for candidate in list(active):
                try:
                    jobs = candidate.next_jobs(batch_size, on_round)
                except Exception as exc:  # a filter failed on this unit's batch
                    fail(candidate, exc)
                    continue
                if jobs:
                    run = candidate
                    break
            for finished in [r for r in active if r.done]:
                active.remove(finished)  # its filtering is over: only the writer touches it now
                writing.append((writer.submit(write_generated_unit, finished), finished))
            while writing and writing[0][0].done():  # one writer thread: they finish in order
                written, finished = writing.popleft()
                try:
                    result = written.result()
                except Exception as exc:  # e.g. a full disk while writing the unit
                    fail(finished, exc)
                    continue
                if on_unit is not None:
                    on_unit(result)
            if run is None:
                busy = [f for r in active for f in r.in_flight if not f.done()]
                busy += [f for f, _ in writing]
                if busy:
                    wait(busy, return_when=FIRST_COMPLETED)
                continue
            try:
                batch = worker.candidates(jobs)
                t0 = time.perf_counter()
                worker.render(batch)
            except Exception as exc:  # the generator failed (e.g. out of memory)
                fail(run, exc)
                continue
            run.generator_seconds += time.perf_counter() - t0
            run.generated += len(batch)
            future = pool.submit(run.filtering.consume, batch)
            run.in_flight.append(future)
            queued.append((future, run))
            while len(queued) > 2:  # bound memory: at most two batches wait for the filters
                oldest, owner = queued.popleft()
                exc = oldest.exception()
                if exc is not None and owner in active:
                    fail(owner, exc)  # type: ignore[arg-type]
    if failures:
        first = failures[0][1]
        if on_failure is not None:
            on_failure([r.unit for r, _ in failures], first)
        raise first
