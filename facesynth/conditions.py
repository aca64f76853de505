"""What a unit's pixels were made with, and when two units (or a regenerated image) can be bit-exact.

Each unit's done-marker records ``made_with``: the generator's batch size, device, dtype and whether it
ran batch-invariant, plus the software versions that decide the pixels. The rules:

- Same recipe, bank, versions, device (type and GPU model) and dtype, with a batch-invariant generator
  (the default on CPU, ``batch_invariant: true`` on GPU): every image is bit-exact, whatever the batch
  size; resuming with another batch size or regenerating one image gives the same bytes.
- A batch-variant GPU run (the CUDA default) is exact only with the same batch size and batch
  composition; an image regenerated alone, or a unit remade with another batch size, differs slightly.
- Filter decisions and scores never depend on the batch size (the pipeline regroups candidates).

So one dataset refuses to mix dtypes, and to mix batch-variant units made with different batch sizes.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from facesynth import __version__
from facesynth.errors import UserInputError
from facesynth.interfaces import Generator

# Keys whose difference makes pixels differ (batch size only matters for batch-variant units).
EXACT_KEYS = ("device", "device_name", "dtype", "facesynth", "torch", "cuda", "diffusers", "transformers")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def made_with(generator: Generator) -> dict[str, Any]:
    """The conditions the generator makes pixels under, as recorded in a unit's done-marker."""
    info = generator.describe()
    device = None if info.get("device") is None else str(info["device"])
    torch = sys.modules.get("torch")  # already imported by every torch-based generator
    cuda = torch is not None and device is not None and device.startswith("cuda")
    return {
        "batch_size": generator.batch_size,
        "batch_invariant": info.get("batch_invariant"),
        # The type: the GPU model is device_name; which GPU of a machine does not change the pixels.
        "device": None if device is None else device.split(":")[0],
        "device_name": torch.cuda.get_device_name(torch.device(device)) if cuda else None,
        "dtype": info.get("dtype"),
        "facesynth": __version__,
        "torch": _version("torch"),
        "cuda": torch.version.cuda if cuda else None,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
    }


def _units(units: list[int | str]) -> str:
    return ", ".join(str(u) for u in units[:8]) + (f" and {len(units) - 8} more" if len(units) > 8 else "")


def check_mixable(conditions: dict[int | str, dict[str, Any] | None], fix: str) -> None:
    """Refuse units of one dataset made in different dtypes, or batch-variant with different batch sizes.

    ``conditions`` maps a unit (or a label such as ``'this run'``) to its ``made_with``; ``fix`` says
    how to resolve it. Units without a record (made by a generator-free ``facesynth filter``) are skipped.
    """
    by_dtype: dict[Any, list[int | str]] = defaultdict(list)
    by_batch: dict[Any, list[int | str]] = defaultdict(list)
    for unit, made in conditions.items():
        if not made:
            continue
        by_dtype[made.get("dtype")].append(unit)
        if made.get("batch_invariant") is False:
            by_batch[made.get("batch_size")].append(unit)
    if len(by_dtype) > 1:
        mix = "; ".join(f"{dtype}: units {_units(units)}" for dtype, units in by_dtype.items())
        raise UserInputError(f"one dataset cannot mix generator dtypes ({mix}); {fix}")
    if len(by_batch) > 1:
        mix = "; ".join(f"batch size {size}: units {_units(units)}" for size, units in by_batch.items())
        raise UserInputError(
            f"batch-variant units (batch_invariant off) made with different batch sizes cannot be mixed "
            f"({mix}): their pixels depend on the batch; {fix}"
        )


def differences(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """Why an image regenerated under ``current`` may differ from one made under ``recorded``."""
    if not recorded:
        return ["the dataset does not record what its images were made with"]
    found = [
        f"{key} was {recorded.get(key)!r}, now {current.get(key)!r}"
        for key in EXACT_KEYS
        if recorded.get(key) != current.get(key)
    ]
    if recorded.get("batch_invariant") is False and recorded.get("batch_size", 1) > 1:
        found.append(
            f"the unit was made batch-variant in batches of {recorded['batch_size']}: an image made alone differs"
        )
    return found


def grouped(conditions: dict[int, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Distinct conditions with the units made under each (for ``stats.json`` and the card)."""
    groups: list[dict[str, Any]] = []
    for unit, made in sorted(conditions.items()):
        for group in groups:
            if group["made_with"] == made:
                group["units"].append(unit)
                break
        else:
            groups.append({"made_with": made, "units": [unit]})
    return groups


def _describe(made: dict[str, Any]) -> str:
    gpu = f" ({made['device_name']})" if made.get("device_name") else ""
    invariant = "batch-invariant" if made.get("batch_invariant") else "batch-variant"
    return (
        f"{made.get('device')}{gpu}, {made.get('dtype')}, batch size {made.get('batch_size')}, {invariant}; "
        f"torch {made.get('torch')}, CUDA {made.get('cuda')}, diffusers {made.get('diffusers')}, "
        f"transformers {made.get('transformers')}, facesynth {made.get('facesynth')}"
    )


def card_section(groups: list[dict[str, Any]] | None) -> str:
    """The card's paragraph on what is bit-exact for this dataset, and under which conditions."""
    groups = [g for g in groups or [] if g["made_with"]]
    if not groups:
        return "No generator made these images (filtered from an existing dataset)."
    made = "\n".join(f"- {_describe(g['made_with'])}: units {_units(g['units'])}" for g in groups)
    if any(
        not g["made_with"].get("batch_invariant") and g["made_with"].get("batch_size", 1) > 1 for g in groups
    ):
        exact = (
            "These images were made batch-variant (`batch_invariant` off, the CUDA default): their pixels depend "
            "on the batch they were made in, so an image regenerated alone differs slightly from the stored one."
        )
    else:
        exact = (
            "Regenerated under the same conditions, every image is bit-identical to the stored one, whatever "
            "the batch size."
        )
    return (
        f"Made with:\n\n{made}\n\n{exact} Another dtype, device, GPU model or software version gives different "
        "pixels. Filter decisions and scores never depend on the batch size."
    )
