"""Parquet shards in the Hugging Face layout.

The columns are declared once, as ``datasets.Features``, in ``facesynth.schema``; the writer
derives the parquet schema (with the ``huggingface`` metadata key that makes ``load_dataset``
return ``Image`` objects) from the Features it is given. Images arrive already encoded and are stored
uncompressed with PLAIN encoding; every other column is snappy-compressed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, Image

from facesynth.errors import FacesynthError
from facesynth.layout import temporary_name


def _write_options(features: Features) -> dict[str, Any]:
    schema = features.arrow_schema
    image_leaves = [f"{name}.bytes" for name, feature in features.items() if isinstance(feature, Image)]
    leaves = [
        f"{field.name}.{child.name}" if pa.types.is_struct(field.type) else field.name
        for field in schema
        for child in (field.type if pa.types.is_struct(field.type) else [field])
    ]
    return {
        "compression": {leaf: ("NONE" if leaf in image_leaves else "SNAPPY") for leaf in leaves},
        "use_dictionary": [leaf for leaf in leaves if leaf not in image_leaves],
        "column_encoding": dict.fromkeys(image_leaves, "PLAIN"),
        # min/max statistics of an image column would copy whole images into the footer
        "write_statistics": [leaf for leaf in leaves if leaf not in image_leaves],
    }


class ParquetShardWriter:
    """Writes rows to one parquet file under a temporary name; ``close`` renames it into place.

    Rows are buffered until ``row_group_bytes`` and then written as one row group, so a row group
    stays under the Hub viewer's limit and memory stays bounded by one row group.
    """

    def __init__(self, path: Path, features: Features, row_group_bytes: int = 64 << 20) -> None:
        self.path = Path(path)
        self.features = features
        self.schema = features.arrow_schema
        self.row_group_bytes = row_group_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temporary_name(self.path)
        self._writer = pq.ParquetWriter(self._tmp, self.schema, **_write_options(features))
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0
        self.num_rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        image = row.get("image")
        self._bytes += len(image["bytes"]) if isinstance(image, dict) else 64
        if self._bytes >= self.row_group_bytes:
            self._flush()

    def write_table(self, table: pa.Table) -> None:
        """Append an Arrow table that already has this writer's schema (used by finalize)."""
        self._flush()
        self._writer.write_table(table.cast(self.schema), row_group_size=max(1, table.num_rows))
        self.num_rows += table.num_rows

    def _flush(self) -> None:
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        self._writer.write_table(table, row_group_size=len(self._rows))
        self.num_rows += len(self._rows)
        self._rows, self._bytes = [], 0

    def close(self) -> Path:
        try:
            self._flush()
            self._writer.close()
            with open(self._tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise FacesynthError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        return self.path

    def abort(self) -> None:
        """Drop the temporary file: nothing partial ever appears under the final name."""
        with contextlib.suppress(Exception):  # the writer may already be broken; the file goes anyway
            self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ParquetShardWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_table(path: Path, table: pa.Table | Iterable[dict[str, Any]], features: Features) -> Path:
    """Write a whole small table (side tables, per-unit records) atomically."""
    with ParquetShardWriter(path, features) as writer:
        if isinstance(table, pa.Table):
            writer.write_table(table)
        else:
            for row in table:
                writer.write(row)
    return Path(path)
