"""facesynth benchmark: smoke recipe -> dataset -> tiny backbone -> eval, resumable, ending in the table row."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import yaml
from recog_helpers import encode, face_view, identity_faces

from facesynth.benchmark import PUBLISHED
from facesynth.cli import main

pytestmark = pytest.mark.slow
SMOKE = Path(__file__).parents[2] / "recipes" / "smoke.yaml"
TINY_TRAIN = {
    "name": "tiny",
    "seed": 0,
    "model": {"backbone": "r18", "width": 8, "layers": [1, 1, 1, 1], "embedding_size": 32},
    "head": {"name": "arcface", "s": 32, "m": 0.3},
    "data": {"batch_size": 16, "num_workers": 0},
    "schedule": {"epochs": 1, "max_steps": 3},
    "checkpoint_every": 2,
}


def _eval_set(folder: Path, name: str) -> Path:
    """A pairs list over views of real LFW faces: 8 same-identity and 8 different-identity pairs."""
    import numpy as np

    folder.mkdir()
    rng = np.random.default_rng(0)
    faces = identity_faces()[:9]
    for k, face in enumerate(faces):
        for view in range(2):
            (folder / f"{k}_{view}.jpg").write_bytes(encode(face_view(face, rng)))
    lines = [f"{k}_0.jpg {k}_1.jpg 1" for k in range(8)] + [f"{k}_0.jpg {k + 1}_1.jpg 0" for k in range(8)]
    (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return folder / f"{name}.txt"


def _benchmark(out: Path, recipe: Path, sets: list[Path], *extra: str) -> list[str]:
    args = ["benchmark", str(SMOKE), "--train-recipe", str(recipe), "--out", str(out), "--no-progress"]
    args += [a for s in sets for a in ("--bin", str(s))]
    args += ["--set", "identities.count=8", *extra]
    return args


def test_benchmark_runs_every_stage_once_and_prints_the_table_row(tmp_path, capsys) -> None:
    recipe = tmp_path / "train.yaml"
    recipe.write_text(yaml.safe_dump(TINY_TRAIN))
    lfw = _eval_set(tmp_path / "lfw", "lfw")
    out = tmp_path / "bench"

    assert main(_benchmark(out, recipe, [lfw])) == 0
    table = capsys.readouterr().out
    for name, _ in PUBLISHED:
        assert name in table
    ours = next(line for line in table.splitlines() if line.startswith("this run: smoke"))
    lfw_cell = ours.split()[3]  # "this run: smoke" is three words, then LFW
    assert 0 <= float(lfw_cell) <= 100 and ours.split()[-1] == "-"  # one set of five: no average
    assert (out / "dataset" / "stats.json").is_file() and (out / "train" / "model.safetensors").is_file()
    first = json.loads((out / "benchmark.json").read_text())
    assert first["rows"][0]["LFW"] == pytest.approx(100 * first["eval"]["accuracy"]["lfw"])

    # Rerun: every stage is found finished; nothing is generated, trained or evaluated again.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "eval.json", out / "train" / "model.safetensors")}
    assert main(_benchmark(out, recipe, [lfw], "--json")) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["rows"] == first["rows"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # A same-harness real-data baseline (the eval faces' own dataset folder stands in for it here).
    real = tmp_path / "real"
    for k in range(8):  # 16 images: one batch of the tiny recipe
        (real / f"id{k}").mkdir(parents=True)
        for view in range(2):
            (real / f"id{k}" / f"{view}.jpg").write_bytes((lfw.parent / f"{k}_{view}.jpg").read_bytes())
    assert main(_benchmark(out, recipe, [lfw], "--baseline", str(real))) == 0
    table = capsys.readouterr().out
    assert "same harness, real: real" in table
    assert (out / "baseline" / "train" / "model.safetensors").is_file()


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_malicious_eval_set_is_refused_before_any_work(tmp_path, capsys) -> None:
    evil = tmp_path / "lfw.bin"
    evil.write_bytes(pickle.dumps(([_Exploit(tmp_path / "pwned")], [True])))
    recipe = tmp_path / "train.yaml"
    recipe.write_text(yaml.safe_dump(TINY_TRAIN))
    out = tmp_path / "bench"
    assert main(_benchmark(out, recipe, [evil])) == 2
    assert not (tmp_path / "pwned").exists() and not out.exists()
    assert "lfw.bin" in capsys.readouterr().err
