"""The recipe hash covers what decides the rows: resolved options and the bytes of local files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from facesynth import fingerprint, layout
from facesynth.errors import FacesynthError
from facesynth.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "recipes" / "smoke.yaml"


def _hash(*overrides: str) -> str:
    return load_recipe(SMOKE, list(overrides)).content_hash()


def test_spelled_out_defaults_hash_like_omitted_ones() -> None:
    base = _hash()
    assert _hash("generator.guidance=3.0", "generator.scheduler=dpm++") == base  # the defaults, spelled out
    assert _hash("filters.0.max_yaw=null", "filters.0.min_det_score=null") == base
    assert _hash("variations.vary.min_cosine=0.85") == base
    assert _hash("identities.max_gallery_cosine=0.3", "identities.block_size=8192") == base
    assert _hash("identities.sampler={name: sphere}") == base
    # execution keys: where and how fast
    assert _hash("generator.batch_size=3", "output.dir=/elsewhere", "executor=slurm") == base
    # what does change the rows changes the hash
    assert _hash("generator.size=72") != base
    assert _hash("filters.0.min_blur=100") != base


def test_an_option_that_only_shares_a_components_key_stays_as_written() -> None:
    """IDiff-Face's ``sampler: ddim`` is a diffusion sampler, not an identity sampler to resolve."""
    from facesynth.generators import GENERATORS

    resolved = fingerprint.resolve_component(GENERATORS, "idiff-face", {"model": "m", "sampler": "ddim"})
    assert resolved["sampler"] == "ddim"


def test_nested_embedder_defaults_are_filled() -> None:
    from facesynth.filters import FILTERS

    short = fingerprint.resolve_component(FILTERS, "identity", {"embedder": "dlib"})
    spelled = {"name": "dlib", "num_jitters": 0, "detector": {"name": "dlib", "model": "hog"}}
    full = fingerprint.resolve_component(FILTERS, "identity", {"embedder": spelled})
    assert short == full
    assert short["embedder"]["detector"]["cnn_fallback"] is True  # a default two levels down


def test_a_changed_default_changes_the_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    from facesynth.generators.tiny import TinyGenerator

    base = _hash()
    field = next(f for f in TinyGenerator.Options.model_fields.values() if f.default == "dpm++")
    monkeypatch.setattr(field, "default", "ddim")
    TinyGenerator.Options.model_rebuild(force=True)
    try:
        assert _hash() != base
    finally:
        monkeypatch.undo()
        TinyGenerator.Options.model_rebuild(force=True)
    assert _hash() == base


def test_local_files_enter_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESYNTH_CACHE", str(tmp_path / "cache"))
    reference = tmp_path / "reference.npy"
    rng = np.random.default_rng(0)
    np.save(reference, rng.standard_normal((8, 16)).astype(np.float32))
    monkeypatch.setattr(fingerprint, "CACHE_MIN_BYTES", 0)  # cache even this small file
    overrides = [f"identities.sampler={{name: gaussian, reference: {reference}}}"]
    first = _hash(*overrides)
    assert _hash(*overrides) == first
    np.save(reference, rng.standard_normal((8, 16)).astype(np.float32))
    os.utime(reference, ns=(1, 1))  # a new mtime: the cached hash is not reused
    assert _hash(*overrides) != first
    cached = layout.read_json(fingerprint.cache_dir() / "file-sha256.json")
    assert cached[str(reference.resolve())]["sha256"] == fingerprint.file_sha256(reference)


def test_file_hashes_are_read_once_per_size_and_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACESYNTH_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x" * fingerprint.CACHE_MIN_BYTES)
    digest = fingerprint.file_sha256(model)
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: reads.append(p) or real_open(p, *a, **k))
    assert fingerprint.file_sha256(model) == digest
    assert reads == []


def test_finalize_refuses_units_of_different_generator_provenance(small_units: Path, tmp_path: Path) -> None:
    import shutil

    from facesynth.finalize import finalize

    out = tmp_path / "out"
    shutil.copytree(small_units, out)
    # Units made on two GPUs of one machine (and weights found in two places) are one generator.
    gpus = tmp_path / "gpus"
    shutil.copytree(small_units, gpus)
    for unit in (0, 1):
        marker = layout.unit_done_marker(gpus, unit)
        done = layout.read_json(marker)
        done["generator"].update(device=f"cuda:{unit}", model_path=f"/host{unit}/weights")
        layout.atomic_write_json(marker, done)
    finalize(gpus)
    # Unit 1 as if made after the Hub repo of the weights moved on to another revision.
    marker = layout.unit_done_marker(out, 1)
    done = layout.read_json(marker)
    done["generator"]["revision"] = "0123abc"
    layout.atomic_write_json(marker, done)
    with pytest.raises(FacesynthError, match=r"unit 1 .*revision"):
        finalize(out)
    assert not (out / layout.STATS).exists()


def test_a_folder_enters_by_the_names_and_contents_of_its_files(tmp_path: Path) -> None:
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "0.jpg").write_bytes(b"first")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "tool").write_bytes(b"ignored")
    images = [f"identities.sampler={{name: images, root: {tmp_path}}}"]
    first = _hash(*images)
    (tmp_path / ".cache" / "tool").write_bytes(b"changed, still ignored")
    assert _hash(*images) == first
    (tmp_path / "alice" / "0.jpg").write_bytes(b"other")
    assert _hash(*images) != first
