"""Writing a unit: its shard, rejected rows and identity table, then its done-marker, last."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from facesynth import layout
from facesynth.conditions import made_with
from facesynth.filtering import UnitFiltering, centroids
from facesynth.schema import CENTROID_PREFIX, unit_identity_features
from facesynth.writer import ParquetShardWriter, write_table

if TYPE_CHECKING:
    from facesynth.rounds import UnitRounds
    from facesynth.worker import Worker


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


def write_generated_unit(rounds: UnitRounds) -> UnitResult:
    """Write a generated unit's files from its rounds; its done-marker is written last."""
    rows, worker = rounds.filtering.rows, rounds.worker
    kept = [i for i in rounds.identities if len(rows[i]) >= rounds.minimum]
    is_kept = set(kept)
    record = [
        {
            "identity": i,
            "images_kept": len(rows[i]) if i in is_kept else 0,
            "attempts": rounds.attempts[i],
            "drop_reason": None
            if i in is_kept
            else f"{len(rows[i])} of {rounds.target} images accepted after {rounds.attempts[i]} attempts",
        }
        for i in rounds.identities
    ]
    made = made_with(worker.generator)
    return write_unit(
        worker,
        rounds.unit,
        rounds.filtering,
        kept,
        record,
        generated=rounds.generated,
        started=rounds.started,
        generator_seconds=rounds.generator_seconds,
        generator=worker.generator.describe(),
        made_with=made,
    )


def write_unit(
    worker: Worker,
    unit: int,
    filtering: UnitFiltering,
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
            for row in sorted(filtering.rows[i], key=lambda r: r["attempt"]):
                writer.write(row)
    write_table(stem.with_suffix(".rejected.parquet"), filtering.rejected, worker.rejected_features)

    unit_centroids = centroids(filtering.context, kept)
    for row in record:
        for name, per_identity in unit_centroids.items():
            vector = per_identity.get(row["identity"])
            row[f"{CENTROID_PREFIX}{name}"] = None if vector is None else vector.tolist()
    write_table(stem.with_suffix(".identities.parquet"), record, unit_identity_features(unit_centroids))
    result = UnitResult(
        unit=unit,
        rows=sum(len(filtering.rows[i]) for i in kept),
        generated=generated,
        identities_kept=len(kept),
        identities_dropped=len(record) - len(kept),
        rejected_by=dict(filtering.rejected_by),
        seconds=time.perf_counter() - started,
        generator_seconds=generator_seconds,
        timings={"filters": filtering.filter_seconds, "encode": filtering.encode_seconds},
    )
    marker = result.__dict__ if generator is None else {**result.__dict__, "generator": generator}
    # Where finalize finds each dataset pass's centroids without building the filter (and its model).
    marker["dataset_pass_spaces"] = {f.name: f.space for f in worker.filters if f.dataset_pass is not None}
    if made_with is not None:
        marker["made_with"] = made_with  # what the pixels depend on besides the recipe (facesynth.conditions)
    layout.atomic_write_json(layout.unit_done_marker(worker.out, unit), marker)
    return result
