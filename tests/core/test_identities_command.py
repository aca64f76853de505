"""`facesynth identities`: the bank alone, its statistics, and bad inputs as one-line exit-2 errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facesynth.cli import main
from facesynth.identity.bank import IdentityBank

SMOKE = Path(__file__).resolve().parents[2] / "recipes" / "smoke.yaml"


def test_identities_command_builds_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bank.safetensors"
    assert main(["identities", str(SMOKE), "--out", str(out), "--set", "identities.count=200"]) == 0
    report = json.loads(capsys.readouterr().out)
    bank = IdentityBank.load(out)
    assert report["identities"] == len(bank) == 200 and bank.dim == 512
    gram = bank.vectors @ bank.vectors.T / np.outer(*(2 * [np.linalg.norm(bank.vectors, axis=1)]))
    np.fill_diagonal(gram, -1)
    assert gram.max() <= 0.3
    assert any(np.isclose(v, gram.max(), atol=1e-4) for v in report.values() if isinstance(v, float))

    # a recipe can point at that prebuilt bank instead of a sampler
    assert (
        main(["validate", str(SMOKE), "--set", f"identities.bank={out}", "--set", "identities.sampler=null"])
        == 0
    )


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (
            ["identities.count=5000", "identities.max_cosine=-0.5", "identities.candidate_budget=6000"],
            "reached",
        ),
        (["identities.gallery=/nonexistent/gallery.npy"], "gallery"),
    ],
)
def test_identities_bad_input_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, overrides: list[str], words: str
) -> None:
    args = ["identities", str(SMOKE), "--out", str(tmp_path / "b.safetensors")]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # above it: the progress bar, if any
    assert last.startswith("facesynth: error:") and words in last, last
    assert not (tmp_path / "b.safetensors").exists()
