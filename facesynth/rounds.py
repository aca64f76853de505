"""Planning: identities cut into units, and a unit's rounds of (identity, attempt) jobs.

A unit is processed in rounds. Round 0 asks for ``images_per_identity`` attempts per identity;
each later round asks again for what the filters rejected, until every identity is full or has
spent its attempt budget.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from facesynth.filtering import UnitFiltering

if TYPE_CHECKING:
    from facesynth.worker import Worker


@dataclass
class UnitPlan:
    """Identities ``[start, stop)`` of the bank, cut into units of consecutive identities."""

    num_identities: int
    identities_per_unit: int

    @property
    def num_units(self) -> int:
        return -(-self.num_identities // self.identities_per_unit)

    def identities(self, unit: int) -> range:
        start = unit * self.identities_per_unit
        return range(start, min(start + self.identities_per_unit, self.num_identities))


class UnitRounds:
    """One unit's rounds: which (identity, attempt) jobs to generate next, and what was kept.

    A unit's schedule depends only on its own filter results, so running several units
    interleaved gives each the same rows as running it alone.
    """

    def __init__(self, worker: Worker, unit: int) -> None:
        variations = worker.recipe.variations
        self.worker, self.unit = worker, unit
        self.target = variations.images_per_identity
        self.minimum = variations.min_images_per_identity or 1
        self.budget = variations.max_attempts_per_identity or self.target
        self.identities = worker.plan.identities(unit)
        self.filtering = UnitFiltering(worker, self.identities)
        self.attempts = dict.fromkeys(self.identities, 0)
        self.queue: deque[tuple[int, int]] = deque()
        self.in_flight: list[Future[None]] = []
        self.reported: set[int] = set()
        self.generated, self.generator_seconds = 0, 0.0
        self.started = time.perf_counter()
        self.done = False

    def next_jobs(
        self, batch_size: int, on_round: Callable[[int, int, int], None] | None
    ) -> list[tuple[int, int]]:
        """The next batch to generate; empty while this round's batches are still being filtered."""
        if not self.queue:
            if any(not f.done() for f in self.in_flight):
                return []
            for future in self.in_flight:
                future.result()  # a filter's exception surfaces here
            self.in_flight.clear()
            self._report(on_round)
            self.queue.extend(self._plan_round())
            if not self.queue:
                self.done = True
                return []
        return [self.queue.popleft() for _ in range(min(batch_size, len(self.queue)))]

    def _plan_round(self) -> list[tuple[int, int]]:
        """Ask again for what the filters rejected, within each identity's attempt budget."""
        jobs: list[tuple[int, int]] = []
        for i in self.identities:
            n = max(0, min(self.target - len(self.filtering.rows[i]), self.budget - self.attempts[i]))
            jobs.extend((i, self.attempts[i] + k) for k in range(n))
            self.attempts[i] += n
        self.filtering.expect(jobs)
        return jobs

    def _report(self, on_round: Callable[[int, int, int], None] | None) -> None:
        """Tell ``on_round`` (identities, images kept, images generated) of the identities just finished.

        Both counts cover the same finished identities, so their ratio is a true pass rate; the images
        of an identity dropped for having too few count as generated, not kept.
        """
        rows, target, budget = self.filtering.rows, self.target, self.budget
        done = {i for i in self.identities if len(rows[i]) >= target or self.attempts[i] >= budget}
        new = done - self.reported
        if on_round is not None and new:
            kept = sum(len(rows[i]) for i in new if len(rows[i]) >= self.minimum)
            on_round(len(new), kept, sum(self.attempts[i] for i in new))
        self.reported |= done
