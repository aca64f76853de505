"""Finalize killed (SIGKILL) at each of its steps: the next run completes it, regenerating nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from outputs import read_all

import facesynth
from facesynth import layout
from facesynth.cli import main
from facesynth.finalize import STAGING, finalize

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "recipes" / "smoke.yaml"
OVERRIDES = ["identities.count=8", "output.identities_per_unit=4"]
# In order; the commit (stats.json) happens between "moved-README.md" and "committed".
STEPS = [
    "shards-staged",
    "staged",
    "moved-data",
    "moved-identities.parquet",
    "moved-rejected.parquet",
    "moved-README.md",
    "committed",
    "units-removed",
]


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output whose units are all done, not finalized yet."""
    from facesynth.prepare import prepare
    from facesynth.recipe import load_recipe
    from facesynth.runner import run_units

    out = tmp_path_factory.mktemp("units") / "out"
    run = prepare(load_recipe(SMOKE, OVERRIDES), out, progress=False)
    run_units(out, range(run["num_units"]), progress=False)
    return out


@pytest.mark.slow
def test_sigkill_at_each_finalize_step_then_rerun_completes_it(
    units: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    reference = tmp_path / "reference"
    shutil.copytree(units, reference)
    finalize(reference)
    expected, expected_stats = read_all(reference), (reference / layout.STATS).read_text()

    # One process per step, killed there; started together (they only read units/ and write their own copy).
    procs = {}
    for step in STEPS:
        shutil.copytree(units, tmp_path / step)
        env = {**os.environ, "FACESYNTH_TEST_KILL_AT": f"finalize:{step}"}
        cmd = [sys.executable, "-m", "facesynth.cli", "finalize", str(tmp_path / step)]
        procs[step] = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    for k, (step, proc) in enumerate(procs.items()):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, (step, err)
        out = tmp_path / step
        committed = k >= STEPS.index("committed")
        assert (out / layout.STATS).exists() == committed, step
        assert main(["info", str(out), "--json"]) == 0
        assert (json.loads(capsys.readouterr().out)["state"] == "finalized") == committed, step

        facesynth.run(SMOKE, out=out, overrides=OVERRIDES, progress=False)
        # stats.json holds each unit's timings: a regenerated unit would change it
        assert (out / layout.STATS).read_text() == expected_stats, step
        assert read_all(out) == expected, step
        assert not (out / layout.UNITS).exists() and not (out / STAGING).exists(), step
