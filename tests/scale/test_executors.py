"""accelerate, Ray and Slurm runs equal the one-process run; kills and reruns end with every unit once."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from outputs import read_all
from scale_helpers import OVERRIDES, SMOKE, free_port

import facesynth
from facesynth import layout
from facesynth.cli import main
from facesynth.errors import UserInputError
from facesynth.executors.slurm import SlurmExecutor, array_task, task_units
from facesynth.filters import FILTERS
from facesynth.hub import upload_plan
from facesynth.recipe import load_recipe
from facesynth.registry import StrictOptions

SETS = [arg for item in OVERRIDES for arg in ("--set", item)]


def _facesynth(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "facesynth.cli", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_accelerate_launch_two_processes_equals_one_process(tmp_path: Path, reference_tables: dict) -> None:
    out = tmp_path / "out"
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "facesynth.cli", "run", str(SMOKE), "--out", str(out), *SETS,
        "--set", "executor.name=accelerate", "--set", "executor.torch_threads=1", "--no-progress",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # both ranks worked, on disjoint halves of the units
    ran = {}
    for line in result.stderr.splitlines():
        if "ran units" in line:
            rank = int(line.split("process ")[1].split()[0])
            ran[rank] = json.loads(line.split("ran units ")[1])
    assert sorted(ran) == [0, 1]
    assert sorted(ran[0] + ran[1]) == list(range(8)) and ran[0] and ran[1]
    assert read_all(out) == reference_tables


@pytest.mark.slow
def test_ray_local_cluster_two_workers_equals_one_process(
    tmp_path: Path, reference_tables: dict, capfd: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    options = ["executor.name=ray", "executor.local_cpus=2", "executor.workers=2", "executor.torch_threads=1"]
    stats = facesynth.run(SMOKE, out=out, overrides=OVERRIDES + options, progress=False)
    assert "ray ran 8 unit(s) on 2 worker(s)" in capfd.readouterr().err
    assert stats["units"] == 8
    assert read_all(out) == reference_tables


def _slurm_env(task: int, count: int = 3) -> dict[str, str]:
    return {
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_COUNT": str(count),
    }


SLURM_ARGS = [*SETS, "--set", "executor.name=slurm", "--set", "executor.torch_threads=1", "--no-progress"]


def _slurm_task_in_process(
    out: Path, task: int, monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None
) -> int:
    with monkeypatch.context() as m:
        for key, value in (env or _slurm_env(task)).items():
            m.setenv(key, value)
        return main(["run", str(SMOKE), "--out", str(out), *SLURM_ARGS])


@pytest.mark.slow
def test_slurm_array_racing_tasks_one_killed_mid_unit_then_rerun_and_finalize(
    tmp_path: Path, reference_tables: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    # tasks 0 and 1 start together on an empty folder and race to prepare it; task 2 runs here
    tasks = [_facesynth("run", str(SMOKE), "--out", str(out), *SLURM_ARGS, env=_slurm_env(k)) for k in (0, 1)]
    killed = tasks[1]
    first, second = task_units(8, 1, 3)[:2]  # task 1 runs units 1, 4, 7
    deadline = time.monotonic() + 240
    while not layout.unit_done_marker(out, first).exists():
        assert killed.poll() is None, killed.stderr.read() if killed.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)  # now busy with its second unit
    killed.wait()
    assert _slurm_task_in_process(out, 2, monkeypatch) == 0
    assert tasks[0].wait(timeout=240) == 0, tasks[0].stderr.read() if tasks[0].stderr else ""
    assert not layout.unit_done_marker(out, second).exists()
    assert not (out / layout.DATA).exists(), "array tasks never finalize"

    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["state"] == "in progress" and info["units_done"] == 6 and info["units_pending"] == 2
    assert main(["finalize", str(out)]) == 2
    assert "2 of 8 units are not finished" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="not finalized"):
        upload_plan(out)

    # the rerun of the killed task, as `sbatch --array=1 array.sbatch` starts it
    rerun = {**_slurm_env(1), "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "1"}
    assert _slurm_task_in_process(out, 1, monkeypatch, {**rerun, "FACESYNTH_SLURM_TASKS": "3"}) == 0
    assert "finished units [1, 4, 7]; 0 unit(s)" in capsys.readouterr().err
    # a unit whose shard disagrees with its done-marker (files mixed from elsewhere) is refused
    marker = layout.unit_done_marker(out, 5)
    original = marker.read_text()
    marker.write_text(json.dumps({**json.loads(original), "rows": json.loads(original)["rows"] + 1}))
    assert main(["finalize", str(out)]) == 1
    assert "unit 5" in capsys.readouterr().err and not (out / layout.DATA).exists()
    marker.write_text(original)
    assert main(["finalize", str(out)]) == 0
    assert read_all(out) == reference_tables
    before = read_all(out)
    assert main(["finalize", str(out)]) == 0  # idempotent
    assert read_all(out) == before


def test_array_task_from_slurm_environment() -> None:
    assert array_task({}) is None
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert array_task(env) == (1, 3)
    with pytest.raises(UserInputError, match="outside"):
        array_task({**env, "SLURM_ARRAY_TASK_ID": "9"})
    # `sbatch --array=2` reruns task 2 of our 3-task script alone: it keeps its units
    rerun = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "2", "SLURM_ARRAY_TASK_COUNT": "1"}
    assert array_task({**rerun, "FACESYNTH_SLURM_TASKS": "3"}) == (2, 3)
    with pytest.raises(UserInputError, match="FACESYNTH_SLURM_TASKS"):
        array_task(rerun)  # a script of one's own, without the variable: not every unit
    # every unit belongs to exactly one task
    units = [u for k in range(3) for u in task_units(10, k, 3)]
    assert sorted(units) == list(range(10))


def test_cleanup_keeps_temporary_files_of_running_processes(tmp_path: Path) -> None:
    import socket

    from facesynth.runner import clean_partial_files

    units = tmp_path / layout.UNITS
    units.mkdir()
    host = socket.gethostname()
    running = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        names = {
            "live": f".unit-00001.parquet.tmp-{host}-{running.pid}",
            "dead": f".unit-00001.parquet.tmp-{host}-{dead.pid}",
            "elsewhere": f".unit-00001.parquet.tmp-other-node-7-{running.pid}",
        }
        for name in names.values():
            (units / name).write_bytes(b"partial")
        clean_partial_files(tmp_path, [1])  # a Slurm task: other hosts may be writing
        assert sorted(p.name for p in units.iterdir()) == sorted([names["live"], names["elsewhere"]])
        clean_partial_files(tmp_path)  # a single-host run: other hosts' files are stale
        assert [p.name for p in units.iterdir()] == [names["live"]]
    finally:
        running.kill()
        running.wait()


def test_slurm_submission_writes_and_submits_array_then_dependent_finalize(
    tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stand-in `sbatch` binary: records its arguments, prints a job id like `sbatch --parsable`
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nwc -l < {calls} | tr -d " "\n')
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)

    out = tmp_path / "out"
    recipe = load_recipe(
        SMOKE, [*OVERRIDES, "executor.name=slurm", "executor.tasks=3", "executor.gpus_per_task=1"]
    )
    assert facesynth.run(recipe, out=out, progress=False) == {}
    array = (out / ".slurm" / "array.sbatch").read_text()
    assert "#SBATCH --array=0-2" in array and "#SBATCH --gres=gpu:1" in array
    assert "export FACESYNTH_SLURM_TASKS=${FACESYNTH_SLURM_TASKS:-3}" in array  # `--array=K` reruns task K
    assert f"-m facesynth.cli run {out / 'recipe.yaml'} --out {out} --no-progress" in array
    assert f"-m facesynth.cli finalize {out}" in (out / ".slurm" / "finalize.sbatch").read_text()
    lines = calls.read_text().splitlines()
    assert lines == [
        f"--parsable {out / '.slurm' / 'array.sbatch'}",
        f"--parsable --dependency=afterok:1 {out / '.slurm' / 'finalize.sbatch'}",
    ]
    # prepared once on the submitting node: the tasks find the same bank
    assert (
        json.loads((out / layout.RUN).read_text())["bank_sha256"]
        == json.loads((reference / layout.RUN).read_text())["bank_sha256"]
    )
    assert SlurmExecutor.Options().cpus_per_task == 4


class FailWhileFlagFilter:
    """A plug-in filter that raises on one identity while a flag file exists (a unit that crashes).

    The flag's path comes from the environment: a file named in the recipe would enter the recipe
    hash, and removing it would make the rerun a different recipe.
    """

    name = "test-fail-while-flag"
    score_columns = ()
    dataset_pass = None

    class Options(StrictOptions):
        identity: int

    def __init__(self, options: Options) -> None:
        self.options = options

    def __call__(self, batch, context) -> None:  # noqa: ANN001 - the Filter protocol's signature
        if Path(os.environ["FACESYNTH_TEST_FLAG"]).exists() and any(
            c.identity == self.options.identity for c in batch
        ):
            raise RuntimeError(f"identity {self.options.identity} exploded")

    def accept(self, candidate, context) -> None:  # noqa: ANN001
        pass


def test_failed_unit_is_marked_for_info_and_unmarked_when_it_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    FILTERS.register(FailWhileFlagFilter.name, FailWhileFlagFilter)
    flag = tmp_path / "flag"
    flag.touch()
    monkeypatch.setenv("FACESYNTH_TEST_FLAG", str(flag))
    data = yaml.safe_load(SMOKE.read_text())
    data["identities"]["count"], data["output"]["identities_per_unit"] = 6, 2
    data["filters"].append({"name": FailWhileFlagFilter.name, "identity": 3})
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="identity 3 exploded"):
        facesynth.run(data, out=out, progress=False)
    marker = json.loads((out / layout.UNITS / "unit-00001.failed.json").read_text())
    assert marker["unit"] == 1 and "identity 3 exploded" in marker["error"] and marker["pid"] == os.getpid()
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # Units overlap: unit 2 may have finished before unit 1 failed. A failed unit is also pending.
    assert info["units_failed"] == 1 and info["units_done"] in (1, 2)
    assert info["units_done"] + info["units_pending"] == 3

    flag.unlink()
    stats = facesynth.run(data, out=out, progress=False)  # the rerun resumes at the failed unit
    assert stats["identities_planned"] == 6 and stats["units"] == 3
    assert not list(out.rglob("*.failed.json"))
