"""Applying the filters to one unit, one (identity, round) group at a time.

The filter thread regroups what the generator made: the filters see all of one identity's
candidates of one round at once, identities in order, so every decision is independent of the
generator's batch size. ``UnitFiltering`` keeps the unit's accepted and rejected rows.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from facesynth.interfaces import Candidate, Filter, FilterContext

if TYPE_CHECKING:
    from facesynth.worker import Worker


def score_columns(filters: Sequence[Filter]) -> list[str]:
    return [column for f in filters for column in f.score_columns]


def apply_filters(filters: Sequence[Filter], batch: Sequence[Candidate], context: FilterContext) -> None:
    """Run the filters in order on a batch, then let every filter remember what was accepted."""
    for f in filters:
        if any(c.accepted for c in batch):
            f(batch, context)
    for candidate in batch:
        if not candidate.accepted:
            continue
        for embedder, vector in candidate.embeddings.items():
            per_identity = context.accepted_embeddings.setdefault(embedder, {})
            per_identity.setdefault(candidate.identity, []).append(vector)
        for f in filters:
            f.accept(candidate, context)


def centroids(context: FilterContext, identities: Sequence[int]) -> dict[str, dict[int, np.ndarray]]:
    """Normalised mean of each identity's accepted embeddings, per embedding space."""
    result: dict[str, dict[int, np.ndarray]] = {}
    for embedder, per_identity in context.accepted_embeddings.items():
        for identity in identities:
            vectors = per_identity.get(identity)
            if vectors:
                mean = np.mean(vectors, axis=0)
                result.setdefault(embedder, {})[identity] = (mean / np.linalg.norm(mean)).astype(np.float32)
    return result


class UnitFiltering:
    """What the filter thread accumulates for one unit."""

    def __init__(self, worker: Worker, identities: range) -> None:
        self.worker = worker
        self.context = FilterContext(
            bank_vectors=worker.bank_vectors,
            unit_identities=identities,
            generator_space=worker.generator.embedding_space if worker.generator else None,
        )
        self.rows: dict[int, list[dict[str, Any]]] = {i: [] for i in identities}
        self.rejected: list[dict[str, Any]] = []
        self.rejected_by: Counter[str] = Counter()
        self.filter_seconds = 0.0
        self.encode_seconds = 0.0
        self.expected: Counter[int] = Counter()  # candidates of this round still to come, per identity
        self.waiting: list[Candidate] = []  # the current identity's candidates until its group is complete

    def expect(self, jobs: Sequence[tuple[int, int]]) -> None:
        """Start a round whose candidates will arrive in the order of ``jobs`` ((identity, attempt))."""
        self.expected = Counter(i for i, _ in jobs)

    def consume(self, batch: Sequence[Candidate]) -> None:
        """Take candidates in job order, however they were batched; filter each identity's round group.

        The filters see all of one identity's candidates of one round at once, in attempt order,
        identities in order: every decision and score depends on the recipe and on the identity's
        history only, never on the generator's batch size. The accepted images of the batch are
        encoded together (in the encoder processes, when there are some).
        """
        accepted: list[Candidate] = []
        for c in batch:
            if self.waiting and self.waiting[0].identity != c.identity:
                raise RuntimeError(
                    f"identity {c.identity} arrived before identity {self.waiting[0].identity} was complete"
                )
            self.waiting.append(c)
            self.expected[c.identity] -= 1
            if self.expected[c.identity] == 0:
                group, self.waiting = self.waiting, []
                accepted += self._filter(group)
        t0 = time.perf_counter()
        for c, row in zip(accepted, self.worker.rows(accepted), strict=True):
            self.rows[c.identity].append(row)
        self.encode_seconds += time.perf_counter() - t0

    def _filter(self, group: list[Candidate]) -> list[Candidate]:
        """Filter one identity's round group, keep the rejected rows; returns the accepted candidates."""
        t0 = time.perf_counter()
        apply_filters(self.worker.filters, group, self.context)
        self.filter_seconds += time.perf_counter() - t0
        for c in group:
            if not c.accepted:
                self.rejected_by[c.rejected_by or "?"] += 1
                self.rejected.append(self.worker.rejected_row(c))
        return [c for c in group if c.accepted]
