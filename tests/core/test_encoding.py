"""Encoder processes give the very bytes the filter thread gives, stop with the run, and a dead one is a
clear error."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from outputs import table_rows
from PIL import Image, ImageCms

from facesynth import layout
from facesynth.encoding import ImageEncoder, encode_image


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    rgb = [Image.fromarray(rng.integers(0, 256, (40 + k, 36, 3), dtype=np.uint8)) for k in range(5)]
    gray = Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (24, 24, 4), dtype=np.uint8))
    with_profile = Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))
    with_profile.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return [*rgb, gray, rgba, with_profile]


@pytest.mark.parametrize("image_format", ["jpeg", "png", "webp"])
def test_encoder_processes_give_the_bytes_of_the_calling_thread(image_format: str) -> None:
    images = _images()
    expected = [encode_image(image, image_format, 90) for image in images]
    assert len(set(expected)) == len(expected)  # eight different images, in a known order
    encoder = ImageEncoder(image_format, 90, processes=3)
    try:
        assert encoder.encode(images) == expected
        assert encoder.encode(images[:1]) == expected[:1]  # fewer images than processes
        assert encoder.encode([]) == []
    finally:
        encoder.close()
    assert ImageEncoder(image_format, 90).encode(images) == expected


def test_a_killed_encoder_process_is_a_clear_error_and_the_next_call_starts_afresh() -> None:
    images = _images()
    others = set(multiprocessing.active_children())
    encoder = ImageEncoder("jpeg", 95, processes=1)
    try:
        encoder.encode(images)
        (child,) = set(multiprocessing.active_children()) - others
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
        with pytest.raises(RuntimeError, match="an image encoder process died.*encode_processes: 0"):
            encoder.encode(images)
        assert encoder.encode(images) == [encode_image(image, "jpeg", 95) for image in images]
    finally:
        encoder.close()
    assert set(multiprocessing.active_children()) <= others  # close stopped the processes


def test_a_run_with_encoder_processes_writes_the_same_units_and_leaves_no_process(
    small_units: Path, tmp_path: Path
) -> None:
    from smoke import SMALL, SMOKE

    from facesynth.prepare import prepare
    from facesynth.recipe import load_recipe
    from facesynth.runner import run_units

    others = set(multiprocessing.active_children())
    out = tmp_path / "out"
    run = prepare(load_recipe(SMOKE, [*SMALL, "writer.encode_processes=2"]), out, progress=False)
    run_units(out, range(run["num_units"]), progress=False)
    # None left running: a run inside a multiprocessing child would otherwise hang at its exit.
    assert set(multiprocessing.active_children()) <= others
    shards = sorted(p.name for p in (small_units / layout.UNITS).glob("*.parquet"))
    assert shards == sorted(p.name for p in (out / layout.UNITS).glob("*.parquet"))
    for name in shards:
        assert table_rows(out / layout.UNITS / name) == table_rows(small_units / layout.UNITS / name), name
