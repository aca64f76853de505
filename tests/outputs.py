"""Reading a whole output for exact comparison between runs (tests/ is on sys.path via pytest's pythonpath)."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq

from facesynth import layout


def table_rows(path: Path) -> list[dict]:
    # NaN scores (checks that did not apply) are never == themselves: compare them as a marker.
    return [
        {k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in pq.read_table(path).to_pylist()
    ]


def read_all(out: Path) -> dict[str, object]:
    """Every published table of an output: shard names, rows, identity and rejected side tables."""
    shards = sorted((Path(out) / layout.DATA).glob("*.parquet"))
    return {
        "names": [p.name for p in shards],
        "data": [table_rows(p) for p in shards],
        "identities": table_rows(Path(out) / layout.IDENTITIES),
        "rejected": table_rows(Path(out) / layout.REJECTED),
    }
