"""Turn finished units into the published dataset: labels, shards, side tables, card, stats.

Finalize is idempotent and crash-safe, with one commit point: it reads only ``units/`` and builds every
published file in ``.finalize/``; then it moves them into place and writes ``stats.json``, the commit:
its presence means 'finalized'. Before it, anything published is a leftover that the next finalize
rebuilds from the intact ``units/``; after it, removing ``units/`` and ``.finalize/`` is cleanup that
the next run (of any command) completes and that never regenerates a unit.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Features

from facesynth import __version__, layout
from facesynth.card import write_card
from facesynth.conditions import check_mixable, grouped
from facesynth.errors import FacesynthError, UserInputError
from facesynth.prepare import read_run
from facesynth.recipe import load_recipe
from facesynth.schema import (
    CENTROID_PREFIX,
    IDENTITY_TABLE,
    UNIT_IDENTITY_COLUMNS,
    features_of,
    rejected_features,
    score_columns_of,
)
from facesynth.writer import ParquetShardWriter, write_table

STAGING = ".finalize"  # published files are built here, then moved into place before the commit
PUBLISHED = (layout.DATA, layout.IDENTITIES, layout.REJECTED, layout.CARD)


def is_finalized(out: Path) -> bool:
    """Whether finalize committed (wrote ``stats.json``); its cleanup may still be pending."""
    return (Path(out) / layout.STATS).exists()


def _step(name: str) -> None:
    """Crash-test hook: ``FACESYNTH_TEST_KILL_AT=finalize:<name>`` SIGKILLs this process here."""
    if os.environ.get("FACESYNTH_TEST_KILL_AT") == f"finalize:{name}":
        os.kill(os.getpid(), signal.SIGKILL)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _clean_up(out: Path) -> None:
    """After the commit: remove the units and the staging folder (idempotent)."""
    _remove(out / layout.UNITS)
    _step("units-removed")
    _remove(out / STAGING)


def _read_units(out: Path, num_units: int) -> list[dict[str, Any]]:
    missing = [u for u in range(num_units) if not layout.unit_done_marker(out, u).exists()]
    if missing:
        raise UserInputError(
            f"{len(missing)} of {num_units} units are not finished (first: {missing[0]}); "
            "run `facesynth run` again to finish them before finalizing"
        )
    return [layout.read_json(layout.unit_done_marker(out, u)) for u in range(num_units)]


def _check_exactly_once(out: Path, units: list[dict[str, Any]], tables: list[pa.Table]) -> None:
    """Each identity in one unit only, and each unit's shard holding the rows its done-marker counted.

    Catches folders mixed from different runs or workers (e.g. files copied in by hand).
    """
    ids = np.concatenate([t["identity"].to_numpy() for t in tables]) if tables else np.array([])
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise FacesynthError(f"identity {int(unique[counts > 1][0])} is in more than one unit of {out}")
    for u, marker in enumerate(units):
        rows = pq.ParquetFile(layout.unit_stem(out, u).with_suffix(".parquet")).metadata.num_rows
        if marker.get("rows") is not None and rows != marker["rows"]:
            raise FacesynthError(
                f"unit {u} of {out} has {rows} rows but its done-marker counted {marker['rows']}; delete "
                f"{layout.unit_done_marker(out, u).name} in {layout.UNITS}/ and rerun to redo the unit"
            )


def check_one_generator(out: Path, units: list[dict[str, Any]]) -> None:
    """Refuse to merge units whose generator provenance differs (e.g. weights resolved to another revision).

    Each done-marker holds the generator's ``describe()``; paths and the device are left out of the
    comparison: workers on different hosts find the same weights in different places, and the workers
    of one machine run on different GPUs (``made_with`` records the device type and GPU model, and
    ``check_mixable`` and ``regenerate`` judge those).
    """

    def made_by(marker: dict[str, Any]) -> dict[str, Any]:
        generator = marker.get("generator") or {}
        return {k: v for k, v in generator.items() if not k.endswith("_path") and k != "device"}

    reference = made_by(units[0]) if units else {}
    for u, marker in enumerate(units):
        differs = sorted(
            k for k in reference.keys() | made_by(marker).keys() if made_by(marker).get(k) != reference.get(k)
        )
        if differs:
            first = differs[0]
            raise FacesynthError(
                f"unit {u} of {out} was made by another generator than unit 0 ({first}: "
                f"{made_by(marker).get(first)!r} vs {reference.get(first)!r}); delete "
                f"{layout.unit_done_marker(out, u).name} in {layout.UNITS}/ (and the units like it) and rerun "
                "to remake them with one generator"
            )


def finalize(out: str | Path) -> dict[str, Any]:
    """Merge the finished units of ``out`` into ``data/``, side tables, ``README.md`` and ``stats.json``."""
    out = Path(out).resolve()
    if is_finalized(out):
        _clean_up(out)  # completes a finalize killed after its commit
        return layout.read_json(out / layout.STATS)
    run = read_run(out)
    if run is None:
        raise UserInputError(f"{out} is not a facesynth output (no {layout.RUN})")
    recipe = load_recipe(out / layout.RECIPE, need_generation=False)
    units = _read_units(out, run["num_units"])
    check_one_generator(out, units)
    made = {u: marker.get("made_with") for u, marker in enumerate(units)}
    check_mixable(made, "remake the odd units with matching generator settings (delete their done-markers)")
    from facesynth.filters import FILTERS
    from facesynth.identity.bank import IdentityBank

    # The columns travel in the unit files; dataset-wide passes work on stored centroids only, so
    # no filter is built here (building one can load face models).
    features = features_of(layout.unit_stem(out, 0).with_suffix(".parquet"))
    columns = score_columns_of(features)
    spaces = units[0].get("dataset_pass_spaces", {}) if units else {}
    passes = [
        (spaces.get(f.name), partial(dataset_pass, FILTERS.parse_options(f.name, f.options)))
        for f in recipe.filters
        if (dataset_pass := FILTERS.get(f.name).dataset_pass) is not None
    ]

    tables = [_read(layout.unit_stem(out, u).with_suffix(".identities.parquet")) for u in range(len(units))]
    _check_exactly_once(out, units, tables)
    identities = pa.concat_tables([t.select(list(UNIT_IDENTITY_COLUMNS)) for t in tables])
    drop_reason: dict[int, str] = {
        i: r
        for i, r in zip(
            identities["identity"].to_pylist(), identities["drop_reason"].to_pylist(), strict=True
        )
        if r
    }
    kept_ids = np.sort([i for i in identities["identity"].to_pylist() if i not in drop_reason]).astype(
        np.int64
    )

    # Dataset-wide checks across units (class separation) on every kept identity's centroid.
    all_centroids = _centroids(tables, set(kept_ids.tolist()))
    dataset_dropped: dict[int, str] = {}
    for space, f in passes:
        if len(kept_ids):
            dataset_dropped.update(f(kept_ids, all_centroids.get(space)))
    drop_reason.update(dataset_dropped)
    kept_ids = np.array([i for i in kept_ids.tolist() if i not in drop_reason], dtype=np.int64)
    label_of = {int(i): label for label, i in enumerate(sorted(kept_ids.tolist()))}

    # Not committed yet: whatever a killed finalize left (staged or already moved) is rebuilt from units/.
    for name in (STAGING, *PUBLISHED):
        _remove(out / name)
    staging = out / STAGING
    staging.mkdir()
    shards = _write_shards(out, staging, len(units), features, label_of, recipe.writer.row_group_mb)
    _step("shards-staged")
    bank = IdentityBank.load(out / layout.BANK) if (out / layout.BANK).exists() else None
    _write_identity_table(staging, identities, bank, label_of, drop_reason)
    rejected = [_read(layout.unit_stem(out, u).with_suffix(".rejected.parquet")) for u in range(len(units))]
    write_table(staging / layout.REJECTED, pa.concat_tables(rejected), rejected_features(columns))
    stats = _stats(recipe, run, units, shards, label_of, dataset_dropped, [f.name for f in recipe.filters])
    stats["identity_bank"] = bank.provenance if bank is not None else None
    stats["made_with"] = grouped(made)
    write_card(staging, recipe, features, stats)
    _step("staged")
    for name in PUBLISHED:
        if (staging / name).exists():  # no data/ when no identity was kept
            os.replace(staging / name, out / name)
        _step(f"moved-{name}")
    layout.fsync_dir(out)
    layout.atomic_write_json(out / layout.STATS, stats)  # the commit point
    _step("committed")
    _clean_up(out)
    return stats


def _centroids(tables: list[pa.Table], kept: set[int]) -> dict[str, np.ndarray]:
    """Per embedding space, a [K, D] array of kept identities' centroids, rows in ``sorted(kept)`` order."""
    per_embedder: dict[str, dict[int, list[float]]] = {}
    for table in tables:
        ids = table["identity"].to_pylist()
        for name in table.column_names:
            if name.startswith(CENTROID_PREFIX):
                values = table[name].to_pylist()
                target = per_embedder.setdefault(name.removeprefix(CENTROID_PREFIX), {})
                target.update({i: v for i, v in zip(ids, values, strict=True) if i in kept and v is not None})
    order = sorted(kept)
    return {
        name: np.array([vectors[i] for i in order], dtype=np.float32)
        for name, vectors in per_embedder.items()
        if len(vectors) == len(order)
    }


def _write_shards(
    out: Path, dest: Path, num_units: int, features: Features, label_of: dict[int, int], row_group_mb: float
) -> list[dict[str, Any]]:
    """Write the kept rows of ``out``'s units, labelled, as ``dest/data/`` shards."""
    sources = []
    for u in range(num_units):
        path = layout.unit_stem(out, u).with_suffix(".parquet")
        ids = _read(path, ["identity"])["identity"].to_numpy()
        if np.isin(ids, list(label_of)).any():
            sources.append(path)
    labels = pa.array(list(label_of), pa.int64()), pa.array(list(label_of.values()), pa.int32())
    shards = []
    for index, source in enumerate(sources):
        name = layout.shard_name(index, len(sources))
        # Memory-mapped, and filtered only when it drops rows: every copy of the images costs time.
        with (
            pq.ParquetFile(source, memory_map=True) as parquet,
            ParquetShardWriter(dest / name, features, int(row_group_mb * (1 << 20))) as writer,
        ):
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group)
                kept = pc.is_in(table["identity"], value_set=labels[0])
                if not pc.all(kept).as_py():
                    table = table.filter(kept)
                if table.num_rows == 0:
                    continue
                label = pc.take(labels[1], pc.index_in(table["identity"], value_set=labels[0]))
                table = table.set_column(table.schema.get_field_index("label"), "label", label)
                writer.write_table(table)
        shards.append({"file": name, "rows": writer.num_rows, "bytes": (dest / name).stat().st_size})
    return shards


def _read(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A small parquet file, read without the dataset machinery (and thread pools) of ``pq.read_table``."""
    with pq.ParquetFile(path, pre_buffer=False) as parquet:
        return parquet.read(columns, use_threads=False)


def _write_identity_table(
    out: Path, identities: pa.Table, bank: Any, label_of: dict[int, int], drop_reason: dict[int, str]
) -> None:
    ids = identities["identity"].to_pylist()
    rows = (
        {
            "identity": i,
            "name": name,
            "label": label_of.get(i, -1),
            "images_kept": kept if i in label_of else 0,
            "attempts": attempts,
            "drop_reason": drop_reason.get(i),
            "vector": None if bank is None else bank.vectors[i].tolist(),
        }
        for i, name, kept, attempts in zip(
            ids,
            identities["name"].to_pylist(),
            identities["images_kept"].to_pylist(),
            identities["attempts"].to_pylist(),
            strict=True,
        )
    )
    write_table(out / layout.IDENTITIES, rows, IDENTITY_TABLE)


def _stats(
    recipe: Any,
    run: dict[str, Any],
    units: list[dict[str, Any]],
    shards: list[dict[str, Any]],
    label_of: dict[int, int],
    dataset_dropped: dict[int, str],
    filter_names: list[str],
) -> dict[str, Any]:
    generated = sum(u["generated"] for u in units)
    rejected_by: Counter[str] = Counter()
    for u in units:
        rejected_by.update(u["rejected_by"])
    # Pass rate of a filter = share of the images it saw that it let through (filters run in order).
    seen, pass_rates = generated - rejected_by["input"], {}  # 'input': unreadable before any filter
    for name in filter_names:
        pass_rates[name] = (seen - rejected_by[name]) / seen if seen else None
        seen -= rejected_by[name]
    rows = sum(s["rows"] for s in shards)
    return {
        "facesynth_version": __version__,
        "recipe_name": recipe.name,
        "generator": units[0].get("generator") if units else None,  # what made the images, as loaded
        "recipe_hash": run["recipe_hash"],
        "bank_sha256": run["bank_sha256"],
        "identities_planned": run["num_identities"],
        "identities_kept": len(label_of),
        "identities_dropped": run["num_identities"] - len(label_of),
        "identities_dropped_dataset_wide": {str(k): v for k, v in sorted(dataset_dropped.items())},
        "images_generated": generated,
        "images_kept": rows,
        "pass_rate": rows / generated if generated else None,
        "filter_pass_rates": pass_rates,
        "rejected_by": dict(rejected_by),
        "units": run["num_units"],
        "shards": shards,
        "generator_seconds": sum(u["generator_seconds"] for u in units),
        "seconds": sum(u["seconds"] for u in units),
    }
