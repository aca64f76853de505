"""Galleries written by facesynth record their embedding space; the bank and the leakage filter check it."""

from __future__ import annotations

import numpy as np
import pytest

from facesynth.cli import main
from facesynth.errors import UserInputError
from facesynth.faces import load_embedder
from facesynth.faces.gallery import Gallery, recorded_space, save_gallery
from facesynth.filters import load_filter
from facesynth.identity.bank import BankOptions, build_bank


@pytest.fixture(scope="module")
def dlib_space() -> str:
    return load_embedder("dlib").space


@pytest.mark.slow
def test_facesynth_gallery_records_the_embedders_space(tmp_path, astronaut_folder, dlib_space, capsys):
    out = tmp_path / "real.safetensors"
    assert main(["gallery", str(astronaut_folder), "--embedder", "dlib", "--out", str(out)]) == 0
    assert f"wrote 1 identities to {out} (space {dlib_space})" in capsys.readouterr().out
    assert recorded_space(out) == dlib_space
    gallery = Gallery(out, "cpu")
    assert (len(gallery), gallery.dim, gallery.space) == (1, 128, dlib_space)
    np.testing.assert_allclose(np.linalg.norm(gallery.vectors, axis=1), 1.0, atol=1e-5)
    load_filter("leakage", gallery=str(out))  # the same space: accepted


def test_leakage_refuses_a_gallery_of_another_space(tmp_path, dlib_space):
    path = save_gallery(tmp_path / "g.safetensors", np.eye(128, dtype=np.float32)[:3], "arcface-onnx:0123")
    with pytest.raises(UserInputError) as error:
        load_filter("leakage", gallery=str(path))  # dlib embedder, 128-d like the gallery
    message = str(error.value)
    assert "arcface-onnx:0123" in message and dlib_space in message and "\n" not in message


def test_a_gallery_without_a_recorded_space_keeps_the_dimension_check(tmp_path):
    path = tmp_path / "g.npy"
    np.save(path, np.eye(128, dtype=np.float32)[:3])
    assert Gallery(path, "cpu").space is None
    load_filter("leakage", gallery=str(path))
    np.save(path, np.ones((3, 64), np.float32))
    with pytest.raises(UserInputError, match="64-d"):
        load_filter("leakage", gallery=str(path))


def test_bank_refuses_a_gallery_of_another_space_than_its_samplers(tmp_path, astronaut_folder, dlib_space):
    gallery = save_gallery(tmp_path / "g.safetensors", np.eye(128, dtype=np.float32)[:3], "other:abc")
    sampler = {"name": "images", "root": str(astronaut_folder), "embedder": "dlib"}
    options = BankOptions.model_validate({"count": 1, "sampler": sampler, "gallery": str(gallery)})
    with pytest.raises(
        UserInputError, match=f"space other:abc but identity sampler 'images' .* {dlib_space}"
    ):
        build_bank(options, seed=0, progress=False)
