"""Finalize killed (SIGKILL) at each of its steps: the next run completes it, regenerating nothing."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from outputs import read_all
from smoke import SMALL, SMOKE

import facesynth
from facesynth import layout
from facesynth.cli import main
from facesynth.finalize import STAGING, finalize

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
# One interpreter imports facesynth once (seconds), then forks one child per (output, step); each child
# finalizes its output until the crash-test hook SIGKILLs it. Prints {step: exit code}.
KILL_EACH_STEP = """\
import json, os, sys, traceback
from facesynth.finalize import finalize

children = {}
for path, step in zip(sys.argv[1::2], sys.argv[2::2]):
    pid = os.fork()
    if pid == 0:
        try:
            os.environ["FACESYNTH_TEST_KILL_AT"] = f"finalize:{step}"
            finalize(path)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    children[step] = pid
print(json.dumps({step: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for step, pid in children.items()}))
"""


@pytest.mark.slow
def test_sigkill_at_each_finalize_step_then_rerun_completes_it(
    small_units: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    reference = tmp_path / "reference"
    shutil.copytree(small_units, reference)
    finalize(reference)
    expected, expected_stats = read_all(reference), (reference / layout.STATS).read_text()

    # One process per step, killed there; run together (each writes only its own copy).
    args = []
    for step in STEPS:
        shutil.copytree(small_units, tmp_path / step)
        args += [str(tmp_path / step), step]
    killer = subprocess.run([sys.executable, "-c", KILL_EACH_STEP, *args], capture_output=True, text=True)
    assert killer.returncode == 0, killer.stderr
    assert json.loads(killer.stdout) == {step: -signal.SIGKILL for step in STEPS}, killer.stderr

    for k, step in enumerate(STEPS):
        out = tmp_path / step
        committed = k >= STEPS.index("committed")
        assert (out / layout.STATS).exists() == committed, step
        assert main(["info", str(out), "--json"]) == 0
        assert (json.loads(capsys.readouterr().out)["state"] == "finalized") == committed, step

        facesynth.run(SMOKE, out=out, overrides=SMALL, progress=False)
        # stats.json holds each unit's timings: a regenerated unit would change it
        assert (out / layout.STATS).read_text() == expected_stats, step
        assert read_all(out) == expected, step
        assert not (out / layout.UNITS).exists() and not (out / STAGING).exists(), step
