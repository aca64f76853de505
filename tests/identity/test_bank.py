"""BankOptions validation, build_bank determinism and provenance, bank files, samplers, spreading."""

from __future__ import annotations

import numpy as np
import pytest
from identity_helpers import max_offdiagonal_cosine
from pydantic import ValidationError
from safetensors.numpy import save_file

from facesynth.errors import UserInputError
from facesynth.identity.bank import BankOptions, IdentityBank, build_bank, separation_stats
from facesynth.identity.samplers import FileSampler, GaussianSampler


def test_options_accept_a_name_or_a_mapping_and_explain_bad_ones():
    assert BankOptions.model_validate({"count": 5, "sampler": "sphere"}).sampler.name == "sphere"
    opts = BankOptions.model_validate({"count": 5, "sampler": {"name": "sphere", "dim": 64}})
    assert opts.sampler.options == {"dim": 64} and opts.budget == 100
    with pytest.raises(ValidationError, match="sampler 'sphere' option dim: Input should be a valid integer"):
        BankOptions.model_validate({"count": 5, "sampler": {"name": "sphere", "dim": "big"}})
    with pytest.raises(ValidationError, match="unknown sampler 'spher' \\(did you mean 'sphere'\\?\\)"):
        BankOptions.model_validate({"count": 5, "sampler": "spher"})
    with pytest.raises(ValidationError, match="either a sampler"):
        BankOptions.model_validate({"count": 5})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        BankOptions.model_validate({"count": 5, "sampler": "sphere", "max_cos": 0.3})


def test_build_bank_is_deterministic_and_records_provenance(tmp_path):
    opts = BankOptions.model_validate(
        {"count": 300, "sampler": {"name": "sphere", "dim": 32}, "max_cosine": 0.5}
    )
    bank = build_bank(opts, seed=11, progress=False)
    again = build_bank(opts, seed=11, progress=False)
    other = build_bank(opts, seed=12, progress=False)
    assert bank.sha256() == again.sha256() != other.sha256()
    assert bank.vectors.shape == (300, 32) and bank.dim == 32 and len(bank) == 300
    p = bank.provenance
    assert p["sampler"] == "sphere" and p["seed"] == 11 and p["max_cosine"] == 0.5
    assert p["candidates_drawn"] == 300 + p["candidates_rejected"]
    assert p["stats"]["nn_cosine_max"] == pytest.approx(max_offdiagonal_cosine(bank.vectors), abs=1e-12)
    assert p["stats"]["nn_cosine_max"] <= 0.5
    bank.save(tmp_path / "bank.safetensors")
    assert [f.name for f in tmp_path.iterdir()] == ["bank.safetensors"]  # no temporary file left
    loaded = IdentityBank.load(tmp_path / "bank.safetensors")
    assert loaded.sha256() == bank.sha256() and loaded.provenance == p


def test_bank_file_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        IdentityBank.load(tmp_path / "missing.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(UserInputError, match="not a readable safetensors file"):
        IdentityBank.load(tmp_path / "corrupt.safetensors")
    bad = np.ones((4, 8), dtype=np.float32)
    bad[2, 1] = np.nan
    save_file({"vectors": bad}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(UserInputError, match="row 2 contains NaN"):
        IdentityBank.load(tmp_path / "nan.safetensors")
    save_file({"vectors": np.ones(8, dtype=np.float32)}, str(tmp_path / "flat.safetensors"))
    with pytest.raises(UserInputError, match="2-D array"):
        IdentityBank.load(tmp_path / "flat.safetensors")
    save_file({"other": np.ones((2, 8), dtype=np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserInputError, match="no 'vectors' tensor"):
        IdentityBank.load(tmp_path / "other.safetensors")


def test_prebuilt_bank_must_respect_the_thresholds(tmp_path):
    vectors = np.eye(6, 16, dtype=np.float32)
    vectors[5] = vectors[0] + 0.2 * vectors[1]  # cosine 0.98 to row 0
    IdentityBank(vectors).save(tmp_path / "b.safetensors")
    ok = BankOptions.model_validate({"count": 5, "bank": str(tmp_path / "b.safetensors")})
    assert build_bank(ok, 0, progress=False).vectors.shape == (5, 16)
    too_close = BankOptions.model_validate({"count": 6, "bank": str(tmp_path / "b.safetensors")})
    with pytest.raises(UserInputError, match="two identities at cosine 0.98"):
        build_bank(too_close, 0, progress=False)
    too_many = BankOptions.model_validate({"count": 7, "bank": str(tmp_path / "b.safetensors")})
    with pytest.raises(UserInputError, match="fewer than count"):
        build_bank(too_many, 0, progress=False)


def test_file_sampler_runs_out_and_reports_nan_rows(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors)
    opts = BankOptions.model_validate(
        {"count": 40, "sampler": {"name": "file", "path": str(tmp_path / "v.npy")}, "max_cosine": 0.2}
    )
    with pytest.raises(UserInputError, match="the sampler ran out of candidates"):
        build_bank(opts, 0, progress=False)
    vectors[9] = np.nan
    np.save(tmp_path / "nan.npy", vectors)
    with pytest.raises(UserInputError, match="row 9 contains NaN"):
        FileSampler(FileSampler.Options(path=tmp_path / "nan.npy"))


def test_gaussian_sampler_fits_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    scales = np.linspace(0.5, 3.0, 16)
    reference = (rng.standard_normal((20_000, 16)) * scales + 5.0).astype(np.float32)
    np.save(tmp_path / "ref.npy", reference)
    raw = GaussianSampler(GaussianSampler.Options(reference=tmp_path / "ref.npy", normalize=False))
    x = raw.draw(20_000, np.random.default_rng(1))
    np.testing.assert_allclose(x.mean(0), 5.0, atol=0.1)
    np.testing.assert_allclose(x.std(0), scales, rtol=0.05)
    pca = GaussianSampler(GaussianSampler.Options(reference=tmp_path / "ref.npy", components=4))
    u = pca.draw(100, np.random.default_rng(1))
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(UserInputError, match="exceeds the dimension 16"):
        GaussianSampler(GaussianSampler.Options(reference=tmp_path / "ref.npy", components=17))


def test_spreading_lowers_the_largest_cosine():
    opts = BankOptions.model_validate(
        {
            "count": 400,
            "sampler": {"name": "sphere", "dim": 16},
            "max_cosine": 0.6,
            "spread": {"iterations": 30},
        }
    )
    bank = build_bank(opts, 0, progress=False)
    record = bank.provenance["spread"]
    assert record["applied"]
    assert record["nn_cosine_after"]["max"] < record["nn_cosine_before"]["max"] - 0.02
    assert separation_stats(bank.vectors)["nn_cosine_max"] == pytest.approx(record["nn_cosine_after"]["max"])


def test_bank_is_written_under_a_host_unique_name_and_fsynced(tmp_path, monkeypatch):
    """Slurm tasks on different hosts may share a pid: the temporary name carries the host too."""
    import os

    from facesynth import layout

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd)
    )
    path = tmp_path / "bank.safetensors"
    IdentityBank(np.eye(4, dtype=np.float32)).save(path)
    assert synced == [str(layout.temporary_name(path))]
    assert [f.name for f in tmp_path.iterdir()] == ["bank.safetensors"]
