"""The dataset card (``README.md``) written next to the shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from datasets import Features

from facesynth import layout
from facesynth.conditions import card_section
from facesynth.recipe import Recipe

if TYPE_CHECKING:
    from huggingface_hub import DatasetCardData


def _size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def card_metadata(features: Features, stats: dict[str, Any]) -> DatasetCardData:
    """The card's YAML header: where the data files are, and the features (from the one declaration)."""
    from huggingface_hub import DatasetCardData

    return DatasetCardData(
        pretty_name=stats["recipe_name"],
        task_categories=["image-classification"],
        size_categories=[_size_category(stats["images_kept"])],
        tags=["synthetic", "face-recognition", "facesynth"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        dataset_info={
            "features": features._to_yaml_list(),
            "splits": [
                {
                    "name": "train",
                    "num_examples": stats["images_kept"],
                    "num_bytes": sum(s["bytes"] for s in stats["shards"]),
                }
            ],
        },
    )


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def render_card(recipe: Recipe, features: Features, stats: dict[str, Any]) -> str:
    header = card_metadata(features, stats).to_yaml() + "\n"
    generator = recipe.generator.name if recipe.generator else "none (filtered an existing dataset)"
    pass_rates = "\n".join(
        f"| `{name}` | {'-' if rate is None else f'{rate:.1%}'} | {stats['rejected_by'].get(name, 0)} |"
        for name, rate in stats["filter_pass_rates"].items()
    )
    dropped = stats["identities_dropped_dataset_wide"]
    recipe_yaml = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    generator_json = json.dumps(stats.get("generator"), indent=2, sort_keys=True)
    rate = "-" if stats["pass_rate"] is None else f"{stats['pass_rate']:.1%}"
    summary = _table(
        [
            ("identities", f"{stats['identities_kept']:,} kept of {stats['identities_planned']:,} planned"),
            ("images", f"{stats['images_kept']:,} kept of {stats['images_generated']:,} generated"),
            ("overall pass rate", rate),
            ("generator", f"`{generator}`"),
            ("shards", len(stats["shards"])),
            ("recipe hash", f"`{stats['recipe_hash']}`"),
        ]
    )
    return f"""---
{header}---

# {stats["recipe_name"]}

A synthetic face-recognition training set made with facesynth
{stats["facesynth_version"]}. Every image was generated from a synthetic identity vector; no photograph of a
real person is in it.

{summary}

## Loading

```python
from datasets import load_dataset

ds = load_dataset("path/or/hub-id", split="train")
```

Columns: `image` (the stored face), `label` (dense 0..K-1 over kept identities), `identity` (index in the
identity bank), `attempt` and `seed` (what regenerates the image: see below), `prompt`, `variation_cosine`
(cosine between the conditioning vector and the identity vector), and one float column per filter score
(NaN where a filter did not compute it). `identities.parquet` maps `identity` to `label`, the identity vector
and the reason an identity was dropped; `rejected.parquet` lists every rejected image with its scores.

## Filters

| filter | pass rate (of images it saw) | rejected |
|---|---|---|
{pass_rates}

Identities dropped by dataset-wide checks: {len(dropped)}.

## Generator

```json
{generator_json}
```

## Reproducing a row

Image `(identity, attempt)` is generated from the bank vector of `identity` (in `identities.parquet`), the
per-image variation and seed derived from `(seed, identity, attempt)`, and the recipe below:
`facesynth.regenerate(dataset_dir, identity, attempt)` does it for one row, and checks the conditions below.

{card_section(stats.get("made_with"))}

## Intended use and ethics

This dataset is meant for training and evaluating face-recognition models without scraping images of real
people. Generated faces can still resemble real people; the recipe's leakage filter (when enabled) rejects
identities too close to a gallery of real identities, but it cannot rule out resemblance to people outside
that gallery. The generator inherits the demographic and pose biases of its training data: measure them on
your own evaluation sets before deployment. Do not use it to impersonate, identify or surveil anyone.
Respect the licences of the models used to make it (see the generator section of the recipe).

## Recipe

```yaml
{recipe_yaml}```
"""


def write_card(out: Path, recipe: Recipe, features: Features, stats: dict[str, Any]) -> None:
    layout.atomic_write_bytes(Path(out) / layout.CARD, render_card(recipe, features, stats).encode())
