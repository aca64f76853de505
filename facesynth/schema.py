"""Every table facesynth writes, declared once as ``datasets.Features``.

The writer derives the parquet schema (with the ``huggingface`` metadata that makes
``load_dataset`` return images) from these declarations, the dataset card its YAML, ``finalize``
the merged tables and ``facesynth info`` the column list. Filter scores are float32 columns named
by the filters (``Filter.score_columns``), NaN where a filter did not compute them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import Features, Image, Sequence, Value

# The dataset rows: the image, its labels, and what regenerates it.
ROW_COLUMNS: dict[str, Any] = {
    "image": Image(),
    "label": Value("int32"),  # dense 0..K-1 over kept identities, assigned at finalize (-1 before)
    "identity": Value("int64"),  # index in the identity bank
    "attempt": Value("int32"),
    "seed": Value("int64"),
    "prompt": Value("string"),
    "variation_cosine": Value("float32"),
}

# rejected.parquet: every rejected image, who rejected it and why.
REJECTED_COLUMNS: dict[str, Any] = {
    "identity": Value("int64"),
    "attempt": Value("int32"),
    "seed": Value("int64"),
    "rejected_by": Value("string"),
    "reason": Value("string"),
}

# units/unit-NNNNN.identities.parquet: one row per identity of a unit, plus centroid_<space> columns.
UNIT_IDENTITY_COLUMNS: dict[str, Any] = {
    "identity": Value("int64"),
    "name": Value("string"),  # the input's folder or label, when filtering an existing dataset
    "images_kept": Value("int32"),
    "attempts": Value("int32"),
    "drop_reason": Value("string"),
}

# identities.parquet: the published identity table.
IDENTITY_TABLE = Features(
    {
        "identity": Value("int64"),
        "name": Value("string"),
        "label": Value("int32"),  # -1 for a dropped identity
        "images_kept": Value("int32"),
        "attempts": Value("int32"),
        "drop_reason": Value("string"),
        "vector": Sequence(Value("float32")),  # the bank vector (None when filtering a dataset)
    }
)

CENTROID_PREFIX = "centroid_"


def _with_scores(columns: dict[str, Any], score_columns: Iterable[str]) -> Features:
    return Features({**columns, **{name: Value("float32") for name in score_columns}})


def dataset_features(score_columns: Iterable[str]) -> Features:
    """The dataset's columns: the image, its labels, what regenerates it, and every filter score."""
    return _with_scores(ROW_COLUMNS, score_columns)


def rejected_features(score_columns: Iterable[str]) -> Features:
    """The side table of rejected images: who rejected them, why, and their scores so far."""
    return _with_scores(REJECTED_COLUMNS, score_columns)


def unit_identity_features(centroid_spaces: Iterable[str]) -> Features:
    """A unit's identity table, with the normalised centroid of each identity's kept embeddings per space."""
    centroids = {f"{CENTROID_PREFIX}{name}": Sequence(Value("float32")) for name in centroid_spaces}
    return Features({**UNIT_IDENTITY_COLUMNS, **centroids})


def score_columns_of(features: Features) -> list[str]:
    """The filter-score columns of a dataset's features (everything after the fixed row columns)."""
    return [name for name in features if name not in ROW_COLUMNS]


def features_of(parquet: Path) -> Features:
    """The Features stored in a parquet file we wrote (read from its schema metadata)."""
    import pyarrow.parquet as pq

    return Features.from_arrow_schema(pq.read_schema(parquet))
