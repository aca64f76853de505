"""One work unit: generate, filter and write the images of a range of identities.

A unit is processed in rounds. Round 0 asks for ``images_per_identity`` attempts per identity;
each later round asks again for what the filters rejected, until every identity is full or has
spent its attempt budget. Batches that mix identities are generated on the main thread while a
single worker thread filters and encodes the previous batch; two units are in flight, so while one
waits for its round's last batch to be filtered the other generates, and a writer thread writes a
finished unit's files, so the model waits neither for the CPU nor for the disk. The filter thread
regroups what the generator made: the filters see all of one identity's candidates of one round at
once, identities in order, so every decision is independent of the generator's batch size.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facesynth import layout
from facesynth.conditions import made_with
from facesynth.interfaces import (
    BankConditionedGenerator,
    Candidate,
    Filter,
    FilterContext,
    Generator,
    RefinesIdentities,
)
from facesynth.recipe import Recipe
from facesynth.schema import CENTROID_PREFIX, dataset_features, rejected_features, unit_identity_features
from facesynth.seeds import identity_seed, image_prompt, image_seed
from facesynth.writer import EXTENSIONS, ParquetShardWriter, encode_image, write_table


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


@dataclass
class UnitResult:
    unit: int
    rows: int
    generated: int
    identities_kept: int
    identities_dropped: int
    rejected_by: dict[str, int]
    seconds: float
    generator_seconds: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Worker:
    """Everything one process needs to run units of one output folder; built once per process."""

    out: Path
    recipe: Recipe
    bank_vectors: np.ndarray
    plan: UnitPlan
    generator: Generator | None  # None when refiltering an existing dataset
    filters: list[Filter]
    variation: Any

    def __post_init__(self) -> None:
        generator_columns = self.generator.score_columns if self.generator is not None else ()
        self.columns = [*generator_columns, *score_columns(self.filters)]
        self.features = dataset_features(self.columns)
        self.rejected_features = rejected_features(self.columns)
        # Identities refined by the generator (its record per identity); their bank rows change in a copy.
        refines = isinstance(self.generator, RefinesIdentities) and self.generator.refines_identities
        self.refined: dict[int, dict[str, float]] | None = {} if refines else None
        if refines:
            self.bank_vectors = np.array(self.bank_vectors, dtype=np.float32)

    def refine(self, identities: np.ndarray) -> None:
        """Let the generator refine, once each, the bank vectors of ``identities`` (seeded per identity)."""
        assert self.refined is not None and isinstance(self.generator, RefinesIdentities)
        todo = [int(i) for i in np.unique(identities) if int(i) not in self.refined]
        if todo:
            seeds = [identity_seed(self.recipe.seed, i) for i in todo]
            vectors, records = self.generator.refine_identities(self.bank_vectors[todo], seeds)
            self.bank_vectors[todo] = vectors
            self.refined.update(zip(todo, records, strict=True))

    def candidates(self, jobs: Sequence[tuple[int, int]]) -> list[Candidate]:
        """Candidates for (identity, attempt) jobs: seed, varied vector and prompt of each."""
        seed = self.recipe.seed
        identities = np.array([i for i, _ in jobs], dtype=np.int64)
        attempts = np.array([a for _, a in jobs], dtype=np.int64)
        if self.refined is not None:
            self.refine(identities)
        vectors, cosines = self.variation.apply(self.bank_vectors, identities, attempts, seed)
        prompts = self.recipe.variations.prompts
        return [
            Candidate(
                identity=i,
                attempt=a,
                seed=image_seed(seed, i, a),
                vector=vectors[k],
                prompt=image_prompt(prompts, seed, i, a) if prompts else None,
                variation_cosine=float(cosines[k]),
                scores=dict(self.refined[i]) if self.refined is not None else {},
            )
            for k, (i, a) in enumerate(jobs)
        ]

    def render(self, candidates: Sequence[Candidate]) -> None:
        vectors = np.stack([c.vector for c in candidates])
        prompts = [c.prompt or "" for c in candidates] if candidates[0].prompt is not None else None
        seeds = [c.seed for c in candidates]
        if isinstance(self.generator, BankConditionedGenerator):  # e.g. negative-identity guidance
            identities = [c.identity for c in candidates]
            images = self.generator.generate_in_bank(vectors, seeds, identities, self.bank_vectors, prompts)
        else:
            images = self.generator.generate(vectors, seeds, prompts)
        for candidate, image in zip(candidates, images, strict=True):
            candidate.image = image
        if self.generator.score_columns:
            for candidate, scores in zip(candidates, self.generator.image_scores(), strict=True):
                candidate.scores.update(scores)

    def row(self, c: Candidate) -> dict[str, Any]:
        """The dataset row of an accepted candidate (label is assigned at finalize)."""
        out = self.recipe.output
        use_crop = self.recipe.writer.store == "aligned" and c.face is not None and c.face.aligned is not None
        from PIL import Image

        image = Image.fromarray(c.face.aligned) if use_crop else c.image  # type: ignore[union-attr]
        stem = c.source.rsplit(".", 1)[0] if c.source else f"{c.identity:07d}_{c.attempt:04d}"
        name = f"{stem}.{EXTENSIONS[out.image_format]}"  # re-encoded: the name says the new format
        row = {
            "image": {"bytes": encode_image(image, out.image_format, out.quality), "path": name},
            "label": -1,
            "identity": c.identity,
            "attempt": c.attempt,
            "seed": c.seed,
            "prompt": c.prompt,
            "variation_cosine": c.variation_cosine,
        }
        row.update({col: c.scores.get(col, float("nan")) for col in self.columns})
        return row

    def rejected_row(self, c: Candidate) -> dict[str, Any]:
        row = {
            "identity": c.identity,
            "attempt": c.attempt,
            "seed": c.seed,
            "rejected_by": c.rejected_by,
            "reason": c.reason,
        }
        row.update({col: c.scores.get(col, float("nan")) for col in self.columns})
        return row


class UnitState:
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
        history only, never on the generator's batch size.
        """
        for c in batch:
            if self.waiting and self.waiting[0].identity != c.identity:
                raise RuntimeError(
                    f"identity {c.identity} arrived before identity {self.waiting[0].identity} was complete"
                )
            self.waiting.append(c)
            self.expected[c.identity] -= 1
            if self.expected[c.identity] == 0:
                group, self.waiting = self.waiting, []
                self._filter(group)

    def _filter(self, group: list[Candidate]) -> None:
        t0 = time.perf_counter()
        apply_filters(self.worker.filters, group, self.context)
        t1 = time.perf_counter()
        for c in group:
            if c.accepted:
                self.rows[c.identity].append(self.worker.row(c))
            else:
                self.rejected_by[c.rejected_by or "?"] += 1
                self.rejected.append(self.worker.rejected_row(c))
        self.filter_seconds += t1 - t0
        self.encode_seconds += time.perf_counter() - t1


class UnitRun:
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
        self.state = UnitState(worker, self.identities)
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
            n = max(0, min(self.target - len(self.state.rows[i]), self.budget - self.attempts[i]))
            jobs.extend((i, self.attempts[i] + k) for k in range(n))
            self.attempts[i] += n
        self.state.expect(jobs)
        return jobs

    def _report(self, on_round: Callable[[int, int, int], None] | None) -> None:
        """Tell ``on_round`` (identities, images kept, images generated) of the identities just finished.

        Both counts cover the same finished identities, so their ratio is a true pass rate; the images
        of an identity dropped for having too few count as generated, not kept.
        """
        rows, target, budget = self.state.rows, self.target, self.budget
        done = {i for i in self.identities if len(rows[i]) >= target or self.attempts[i] >= budget}
        new = done - self.reported
        if on_round is not None and new:
            kept = sum(len(rows[i]) for i in new if len(rows[i]) >= self.minimum)
            on_round(len(new), kept, sum(self.attempts[i] for i in new))
        self.reported |= done

    def finish(self) -> UnitResult:
        """Write the unit's files; its done-marker is written last."""
        rows, worker = self.state.rows, self.worker
        kept = [i for i in self.identities if len(rows[i]) >= self.minimum]
        is_kept = set(kept)
        record = [
            {
                "identity": i,
                "images_kept": len(rows[i]) if i in is_kept else 0,
                "attempts": self.attempts[i],
                "drop_reason": None
                if i in is_kept
                else f"{len(rows[i])} of {self.target} images accepted after {self.attempts[i]} attempts",
            }
            for i in self.identities
        ]
        made = made_with(worker.generator)
        return write_unit(
            worker,
            self.unit,
            self.state,
            kept,
            record,
            generated=self.generated,
            started=self.started,
            generator_seconds=self.generator_seconds,
            generator=worker.generator.describe(),
            made_with=made,
        )


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
    active: list[UnitRun] = []
    writing: deque[tuple[Future[UnitResult], UnitRun]] = deque()
    failures: list[tuple[UnitRun, Exception]] = []
    batch_size = max(1, worker.generator.batch_size)
    queued: deque[tuple[Future[None], UnitRun]] = deque()

    def fail(run: UnitRun, exc: Exception) -> None:
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
                active.append(UnitRun(worker, todo.popleft()))
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
                writing.append((writer.submit(finished.finish), finished))
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
            future = pool.submit(run.state.consume, batch)
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


def write_unit(
    worker: Worker,
    unit: int,
    state: UnitState,
    kept: list[int],
    record: list[dict],
    *,
    generated: int,
    started: float,
    generator_seconds: float = 0.0,
    generator: dict[str, Any] | None = None,
    made_with: dict[str, Any] | None = None,
) -> UnitResult:
    """Write a unit's shard, rejected images and identity table, then its done-marker, last.

    ``record`` holds one row per identity; ``started`` is the ``perf_counter`` time the unit began.
    """
    stem = layout.unit_stem(worker.out, unit)
    row_group_bytes = int(worker.recipe.writer.row_group_mb * (1 << 20))
    with ParquetShardWriter(stem.with_suffix(".parquet"), worker.features, row_group_bytes) as writer:
        for i in kept:
            for row in sorted(state.rows[i], key=lambda r: r["attempt"]):
                writer.write(row)
    write_table(stem.with_suffix(".rejected.parquet"), state.rejected, worker.rejected_features)

    unit_centroids = centroids(state.context, kept)
    for row in record:
        for name, per_identity in unit_centroids.items():
            vector = per_identity.get(row["identity"])
            row[f"{CENTROID_PREFIX}{name}"] = None if vector is None else vector.tolist()
    write_table(stem.with_suffix(".identities.parquet"), record, unit_identity_features(unit_centroids))
    result = UnitResult(
        unit=unit,
        rows=sum(len(state.rows[i]) for i in kept),
        generated=generated,
        identities_kept=len(kept),
        identities_dropped=len(record) - len(kept),
        rejected_by=dict(state.rejected_by),
        seconds=time.perf_counter() - started,
        generator_seconds=generator_seconds,
        timings={"filters": state.filter_seconds, "encode": state.encode_seconds},
    )
    marker = result.__dict__ if generator is None else {**result.__dict__, "generator": generator}
    # Where finalize finds each dataset pass's centroids without building the filter (and its model).
    marker["dataset_pass_spaces"] = {f.name: f.space for f in worker.filters if f.dataset_pass is not None}
    if made_with is not None:
        marker["made_with"] = made_with  # what the pixels depend on besides the recipe (facesynth.conditions)
    layout.atomic_write_json(layout.unit_done_marker(worker.out, unit), marker)
    return result
