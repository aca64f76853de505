"""Malformed recipes: exit code 2, a one-line message that names the key, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from facesynth.cli import main

GOOD = """\
name: t
seed: 1
output:
  dir: out
identities:
  count: 8
  sampler: sphere
  max_cosine: 0.3
generator:
  name: tiny
  size: 64
variations:
  images_per_identity: 2
filters: []
"""


def _edit(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


# (recipe text, words the one-line error must contain)
CASES = {
    "unknown top-level key": (GOOD + "outptu: {}\n", ["outptu", "did you mean"]),
    "unknown output key": (_edit("  dir: out", "  dir: out\n  shard_size: 3"), ["output.shard_size"]),
    "misspelt output key": (_edit("  dir: out", "  dri: out"), ["output.dri", "did you mean 'dir'"]),
    "seed not an int": (_edit("seed: 1", "seed: one"), ["seed"]),
    "negative seed": (_edit("seed: 1", "seed: -4"), ["seed"]),
    "bad name": (_edit("name: t", "name: 'my recipe!'"), ["name"]),
    "missing name": (GOOD.replace("name: t\n", "", 1), ["name"]),
    "missing identities": (GOOD.split("identities:")[0] + "generator:\n  name: tiny\n", ["identities"]),
    "missing generator": (_edit("generator:\n  name: tiny\n  size: 64\n", ""), ["generator"]),
    "unknown generator": (_edit("name: tiny", "name: tiny2"), ["generator", "tiny2"]),
    "unknown generator option": (_edit("  size: 64", "  size: 64\n  stesp: 3"), ["generator.stesp"]),
    "generator option wrong type": (_edit("  size: 64", "  size: big"), ["generator.size"]),
    "bad image format": (_edit("  dir: out", "  dir: out\n  image_format: gif"), ["output.image_format"]),
    "quality out of range": (_edit("  dir: out", "  dir: out\n  quality: 101"), ["output.quality"]),
    "zero images": (
        _edit("images_per_identity: 2", "images_per_identity: 0"),
        ["variations.images_per_identity"],
    ),
    "min above target": (
        _edit("images_per_identity: 2", "images_per_identity: 2\n  min_images_per_identity: 5"),
        ["min_images_per_identity"],
    ),
    "budget below target": (
        _edit("images_per_identity: 2", "images_per_identity: 4\n  max_attempts_per_identity: 2"),
        ["max_attempts_per_identity"],
    ),
    "unknown filter": (_edit("filters: []", "filters:\n  - name: blurr"), ["filter", "blurr"]),
    "filter without name": (_edit("filters: []", "filters:\n  - threshold: 3"), ["filters.0.name"]),
    "filters not a list": (_edit("filters: []", "filters: face"), ["filters"]),
    "duplicate filter": (
        _edit("filters: []", "filters:\n  - name: quality\n  - name: quality"),
        ["quality", "twice"],
    ),
    "unknown variation": (
        _edit("images_per_identity: 2", "images_per_identity: 2\n  vary: wobble"),
        ["wobble"],
    ),
    "prompt slot without choices": (
        _edit("images_per_identity: 2", "images_per_identity: 2\n  prompts:\n    template: 'a {pose} face'"),
        ["variations.prompts", "pose"],
    ),
    "prompts for a generator without prompts": (
        _edit("images_per_identity: 2", "images_per_identity: 2\n  prompts:\n    template: 'a face'"),
        ["variations.prompts", "tiny"],
    ),
    "bad yaml": (GOOD + "generator: [unclosed\n", ["invalid YAML"]),
    "not a mapping": ("- just\n- a list\n", ["mapping"]),
    "identities count wrong type": (_edit("count: 8", "count: many"), ["identities.count"]),
    "unknown sampler": (_edit("sampler: sphere", "sampler: cube"), ["cube"]),
    "writer store wrong": (GOOD + "writer:\n  store: thumbnails\n", ["writer.store"]),
    "unknown executor": (GOOD + "executor: spark\n", ["executor", "spark"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_recipe_is_one_line_exit_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    text, words = CASES[case]
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"


def test_error_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(_edit("  size: 64", "  size: 64\n  stesp: 3"))
    assert main(["validate", str(path)]) == 2
    line = GOOD.splitlines().index("  size: 64") + 2
    assert f"r.yaml:{line}:" in capsys.readouterr().err


def test_good_recipe_validates_and_set_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    assert main(["validate", str(path), "--set", "identities.count=3", "--set", "generator.steps=2"]) == 0
    out = capsys.readouterr().out
    assert "count: 3" in out and "steps: 2" in out
    assert main(["validate", str(path), "--set", "generator.stesp=2"]) == 2
    assert "generator.stesp" in capsys.readouterr().err


def test_cli_subprocess_exit_codes(tmp_path: Path) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "facesynth.cli", "run", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "recipe file not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "outptu: {}\n")
    result = subprocess.run(
        [sys.executable, "-m", "facesynth.cli", "validate", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "outptu" in result.stderr and "Traceback" not in result.stderr
    schema = subprocess.run([sys.executable, "-m", "facesynth.cli", "schema"], capture_output=True, text=True)
    assert schema.returncode == 0 and '"identities"' in schema.stdout
