"""One work unit: generate, filter and write the images of a range of identities.

A unit is processed in rounds. Round 0 asks for ``images_per_identity`` attempts per identity;
each later round asks again for what the filters rejected, until every identity is full or has
spent its attempt budget. Within a round, batches that mix identities are generated on the main
thread while a single worker thread filters and encodes the previous batch, so the model does not
wait for the CPU; one worker thread keeps the filters' order, and so the result, deterministic.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facesynth import layout
from facesynth.interfaces import Candidate, Filter, FilterContext, Generator
from facesynth.recipe import Recipe
from facesynth.seeds import image_prompt, image_seed
from facesynth.writer import (
    EXTENSIONS,
    ParquetShardWriter,
    dataset_features,
    encode_image,
    rejected_features,
    write_table,
)


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
    """Normalised mean of each identity's accepted embeddings, per embedder."""
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
    generator: Generator
    filters: list[Filter]
    variation: Any

    def __post_init__(self) -> None:
        self.columns = score_columns(self.filters)
        self.features = dataset_features(self.columns)
        self.rejected_features = rejected_features(self.columns)

    def candidates(self, jobs: Sequence[tuple[int, int]]) -> list[Candidate]:
        """Candidates for (identity, attempt) jobs: seed, varied vector and prompt of each."""
        seed = self.recipe.seed
        identities = np.array([i for i, _ in jobs], dtype=np.int64)
        attempts = np.array([a for _, a in jobs], dtype=np.int64)
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
            )
            for k, (i, a) in enumerate(jobs)
        ]

    def render(self, candidates: Sequence[Candidate]) -> None:
        vectors = np.stack([c.vector for c in candidates])
        prompts = [c.prompt or "" for c in candidates] if candidates[0].prompt is not None else None
        images = self.generator.generate(vectors, [c.seed for c in candidates], prompts)
        for candidate, image in zip(candidates, images, strict=True):
            candidate.image = image

    def row(self, c: Candidate) -> dict[str, Any]:
        """The dataset row of an accepted candidate (label is assigned at finalize)."""
        out = self.recipe.output
        use_crop = self.recipe.writer.store == "aligned" and c.face is not None and c.face.aligned is not None
        from PIL import Image

        image = Image.fromarray(c.face.aligned) if use_crop else c.image  # type: ignore[union-attr]
        name = c.source or f"{c.identity:07d}_{c.attempt:04d}.{EXTENSIONS[out.image_format]}"
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
            generator_space=getattr(worker.generator, "embedding_space", None),
        )
        self.rows: dict[int, list[dict[str, Any]]] = {i: [] for i in identities}
        self.rejected: list[dict[str, Any]] = []
        self.rejected_by: Counter[str] = Counter()
        self.filter_seconds = 0.0
        self.encode_seconds = 0.0

    def consume(self, batch: list[Candidate]) -> None:
        t0 = time.perf_counter()
        apply_filters(self.worker.filters, batch, self.context)
        t1 = time.perf_counter()
        for c in batch:
            if c.accepted:
                self.rows[c.identity].append(self.worker.row(c))
            else:
                self.rejected_by[c.rejected_by or "?"] += 1
                self.rejected.append(self.worker.rejected_row(c))
        self.filter_seconds += t1 - t0
        self.encode_seconds += time.perf_counter() - t1


def run_unit(worker: Worker, unit: int, on_round: Callable[[int, int], None] | None = None) -> UnitResult:
    """Generate, filter and write one unit; its done-marker is written last."""
    started = time.perf_counter()
    variations = worker.recipe.variations
    target, minimum = variations.images_per_identity, variations.min_images_per_identity or 1
    budget = variations.max_attempts_per_identity or target
    identities = worker.plan.identities(unit)
    state = UnitState(worker, identities)
    attempts = dict.fromkeys(identities, 0)
    generated, generator_seconds = 0, 0.0
    batch_size = max(1, worker.generator.batch_size)
    finished: set[int] = set()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="facesynth-filter") as pool:
        while True:
            jobs: list[tuple[int, int]] = []
            for i in identities:
                n = min(target - len(state.rows[i]), budget - attempts[i])
                jobs.extend((i, attempts[i] + k) for k in range(max(0, n)))
                attempts[i] += max(0, n)
            if not jobs:
                break
            pending: deque[Future[None]] = deque()
            for start in range(0, len(jobs), batch_size):
                batch = worker.candidates(jobs[start : start + batch_size])
                t0 = time.perf_counter()
                worker.render(batch)
                generator_seconds += time.perf_counter() - t0
                generated += len(batch)
                pending.append(pool.submit(state.consume, batch))
                while len(pending) > 2:  # bound memory: at most two batches wait for the filters
                    pending.popleft().result()
            for future in pending:
                future.result()
            if on_round is not None:
                done = {i for i in identities if len(state.rows[i]) >= target or attempts[i] >= budget}
                on_round(len(done - finished), sum(len(state.rows[i]) for i in done - finished))
                finished |= done

    kept = [i for i in identities if len(state.rows[i]) >= minimum]
    record = []
    for i in identities:
        reason = None
        if i not in kept:
            reason = f"{len(state.rows[i])} of {target} images accepted after {attempts[i]} attempts"
        record.append(
            {
                "identity": i,
                "images_kept": len(state.rows[i]) if reason is None else 0,
                "attempts": attempts[i],
                "drop_reason": reason,
            }
        )
    write_unit(worker, unit, state, kept, record)
    result = UnitResult(
        unit=unit,
        rows=sum(len(state.rows[i]) for i in kept),
        generated=generated,
        identities_kept=len(kept),
        identities_dropped=len(identities) - len(kept),
        rejected_by=dict(state.rejected_by),
        seconds=time.perf_counter() - started,
        generator_seconds=generator_seconds,
        timings={"filters": state.filter_seconds, "encode": state.encode_seconds},
    )
    describe = getattr(worker.generator, "describe", None)
    marker = {
        **result.__dict__,
        "generator": describe() if describe else {"generator": worker.generator.name},
    }
    layout.atomic_write_json(layout.unit_done_marker(worker.out, unit), marker)
    return result


def write_unit(worker: Worker, unit: int, state: UnitState, kept: list[int], record: list[dict]) -> None:
    from datasets import Features, Sequence, Value

    stem = layout.unit_stem(worker.out, unit)
    row_group_bytes = int(worker.recipe.writer.row_group_mb * (1 << 20))
    with ParquetShardWriter(stem.with_suffix(".parquet"), worker.features, row_group_bytes) as writer:
        for i in kept:
            for row in sorted(state.rows[i], key=lambda r: r["attempt"]):
                writer.write(row)
    write_table(stem.with_suffix(".rejected.parquet"), state.rejected, worker.rejected_features)

    unit_centroids = centroids(state.context, kept)
    columns: dict[str, Any] = {
        "identity": Value("int64"),
        "name": Value("string"),
        "images_kept": Value("int32"),
        "attempts": Value("int32"),
        "drop_reason": Value("string"),
    }
    columns.update({f"centroid_{name}": Sequence(Value("float32")) for name in unit_centroids})
    for row in record:
        for name, per_identity in unit_centroids.items():
            vector = per_identity.get(row["identity"])
            row[f"centroid_{name}"] = None if vector is None else vector.tolist()
    write_table(stem.with_suffix(".identities.parquet"), record, Features(columns))
