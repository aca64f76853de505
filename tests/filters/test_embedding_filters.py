"""Identity consistency, separation and near-duplicates with the real dlib embedder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from filter_helpers import accept_all

from facesynth.faces import load_embedder
from facesynth.filters import load_filter
from facesynth.filters.separation import colliding_identities


def test_dlib_embedder_contract(astronaut, astronaut_variants) -> None:
    embedder = load_embedder("dlib")
    vectors = embedder.embed_images([astronaut, np.zeros((80, 80, 3), np.uint8), *astronaut_variants[:2]])
    assert vectors.shape == (4, 128) and vectors.dtype == np.float32
    assert np.isnan(vectors[1]).all()
    np.testing.assert_allclose(np.linalg.norm(vectors[[0, 2, 3]], axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[2] > 0.95 and vectors[0] @ vectors[3] > 0.95


def test_astronaut_variants_pass_identity_and_lfw_faces_fail(
    astronaut, astronaut_variants, lfw, make_batch, context
) -> None:
    filters = [load_filter("face"), load_filter("identity", embedder={"name": "dlib"})]
    ctx = context()
    first = make_batch([astronaut])
    for f in filters:
        f(first, ctx)
    accept_all(filters, first, ctx)
    assert first[0].accepted, first[0].reason  # first image of an identity: accepted when it has a face

    strangers = lfw[0][:10]
    batch = make_batch(astronaut_variants + strangers)
    for f in filters:
        f(batch, ctx)
    variants, others = batch[: len(astronaut_variants)], batch[len(astronaut_variants) :]
    assert all(c.accepted for c in variants), [(c.reason, c.scores) for c in variants]
    assert all(c.scores["identity_cosine"] >= 0.92 for c in variants)
    faced = [c for c in others if c.rejected_by != "face"]
    assert len(faced) >= 8
    assert all(c.rejected_by == "identity" and c.reason.startswith("identity cosine") for c in faced)


def test_new_identity_uses_the_batch_medoid(astronaut, astronaut_variants, lfw, make_batch, context) -> None:
    identity = load_filter("identity")
    batch = make_batch([lfw[0][3], astronaut, *astronaut_variants[:3]])
    identity(batch, context())
    assert [c.accepted for c in batch] == [False, True, True, True, True]


def test_identity_in_generator_space_compares_to_the_bank(
    tiny_arcface, other_tiny_arcface, astronaut, make_batch, context
) -> None:
    embedder = load_embedder("arcface-onnx", model=str(tiny_arcface))
    assert embedder.space == f"arcface-onnx:{hashlib.sha256(tiny_arcface.read_bytes()).hexdigest()}"
    vector = embedder.embed_images([astronaut])[0]
    bank = np.stack([vector, -vector])
    identity = load_filter("identity", embedder={"name": "arcface-onnx", "model": str(tiny_arcface)})
    batch = make_batch([astronaut, astronaut], identities=[0, 1])
    identity(batch, context(bank=bank, space=embedder.space))
    assert batch[0].accepted and batch[0].scores["identity_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert batch[1].rejected_by == "identity"

    # A generator conditioned in another ArcFace's space (another file, same embedder name): the
    # bank is not this embedder's space, so each identity is judged by its own images instead.
    other_space = load_embedder("arcface-onnx", model=str(other_tiny_arcface)).space
    assert other_space != embedder.space
    for space in (other_space, "arcface-onnx"):
        batch = make_batch([astronaut, astronaut], identities=[0, 1])
        identity(batch, context(bank=bank, space=space))
        assert all(c.accepted for c in batch), space


def test_two_arcface_files_do_not_share_vectors(
    tiny_arcface, other_tiny_arcface, astronaut, make_batch, context
) -> None:
    first = load_filter("duplicates", embedder={"name": "arcface-onnx", "model": str(tiny_arcface)})
    second = load_filter("duplicates", embedder={"name": "arcface-onnx", "model": str(other_tiny_arcface)})
    batch = make_batch([astronaut])
    ctx = context()
    first(batch, ctx)
    second(batch, ctx)
    spaces = [first.embedder.space, second.embedder.space]
    assert sorted(batch[0].embeddings) == sorted(spaces) and spaces[0] != spaces[1]
    one, two = (batch[0].embeddings[s] for s in spaces)
    np.testing.assert_allclose(one, first.embedder.embed_images([astronaut])[0], atol=1e-6)
    np.testing.assert_allclose(two, second.embedder.embed_images([astronaut])[0], atol=1e-6)
    assert float(one @ two) < 0.99  # different networks, different vectors

    # The same file under another path is the same space: vectors are shared, not recomputed.
    copy = tiny_arcface.parent.parent / "copy_of_arcface.onnx"
    copy.write_bytes(tiny_arcface.read_bytes())
    third = load_filter("duplicates", embedder={"name": "arcface-onnx", "model": str(copy)})
    assert third.embedder.space == spaces[0]
    accept_all([first, second], batch, ctx)
    again = make_batch([astronaut])
    third(again, ctx)
    assert again[0].rejected_by == "duplicates"  # compared with what the first filter accepted


def test_dlib_space_is_its_model_files_hash() -> None:
    from facesynth.faces.models import dlib_model_path

    embedder = load_embedder("dlib")
    digests = [
        hashlib.sha256(Path(dlib_model_path(f)).read_bytes()).hexdigest() for f in embedder.MODEL_FILES
    ]
    assert embedder.space == "dlib:" + hashlib.sha256(" ".join(digests).encode()).hexdigest()


def test_duplicate_is_rejected(astronaut, astronaut_variants, make_batch, context) -> None:
    filters = [load_filter("face"), load_filter("duplicates")]
    ctx = context()
    batch = make_batch([astronaut, astronaut.copy()])
    for f in filters:
        f(batch, ctx)
    assert batch[0].accepted
    assert batch[1].rejected_by == "duplicates" and batch[1].scores["duplicates_cosine"] > 0.999
    accept_all(filters, batch, ctx)
    again = make_batch([astronaut])
    for f in filters:
        f(again, ctx)
    assert again[0].rejected_by == "duplicates"  # against the unit's accepted images too


def test_distinct_faces_are_not_duplicates(lfw, make_batch, context) -> None:
    batch = make_batch(lfw[0][:6])
    load_filter("duplicates")(batch, context())
    assert sum(c.accepted for c in batch) >= 5
    assert not [c.reason for c in batch if c.reason and c.reason.startswith("duplicate")]


def test_separation_rejects_an_image_of_another_identity(
    astronaut, astronaut_variants, lfw, make_batch, context
) -> None:
    filters = [load_filter("face"), load_filter("separation")]
    ctx = context()
    first = make_batch([astronaut, lfw[0][0]], identities=[0, 1])
    for f in filters:
        f(first, ctx)
    accept_all(filters, first, ctx)
    assert all(c.accepted for c in first)
    batch = make_batch([astronaut_variants[1], lfw[0][5]], identities=[1, 2])
    for f in filters:
        f(batch, ctx)
    assert batch[0].rejected_by == "separation" and "(identity 0)" in batch[0].reason
    assert batch[1].accepted


def test_dataset_pass_drops_colliding_identities(tmp_path) -> None:
    """The pass finalize runs across units works on stored centroids: no face model is loaded."""
    from facesynth.filters import FILTERS

    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((5, 128)).astype(np.float32)
    centroids[3] = centroids[1] + 0.05 * rng.standard_normal(128)
    identities = np.array([10, 11, 12, 13, 14])
    separation = FILTERS.get("separation")
    options = FILTERS.parse_options("separation", {"max_cosine": 0.5})
    dropped = separation.dataset_pass(options, identities, centroids)
    assert list(dropped) == [13] and "identity 11" in dropped[13]
    assert colliding_identities(identities, centroids, 0.5, block=2) == dropped
    assert separation.dataset_pass(options, identities, None) == {}  # no unit stored its space
    # an embedder whose model file is gone: building the filter would fail, the pass does not need it
    missing = {"embedder": {"name": "arcface-onnx", "model": str(tmp_path / "gone.onnx")}}
    options = FILTERS.parse_options("separation", missing)
    assert list(separation.dataset_pass(options, identities, centroids)) == [13]
    assert all(FILTERS.get(name).dataset_pass is None for name in FILTERS.names() if name != "separation")
