"""The smoke recipe end to end: dataset layout, labels, regeneration, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from outputs import read_all
from smoke import SETS, SMOKE

import facesynth
from facesynth import layout, schema
from facesynth.cli import main
from facesynth.encoding import encode_image


def test_smoke_dataset_loads_with_datasets(smoke_run: tuple[Path, dict]) -> None:
    out, stats = smoke_run
    ds = load_dataset(str(out), split="train")
    assert len(ds) == stats["images_kept"] > 0
    assert ds.features["image"].__class__.__name__ == "Image"
    labels = sorted(set(ds["label"]))
    assert labels == list(range(stats["identities_kept"]))
    # every (identity, attempt) once, and each label maps to one identity
    pairs = list(zip(ds["identity"], ds["attempt"], strict=True))
    assert len(set(pairs)) == len(pairs)
    label_to_identity = {}
    for label, identity in zip(ds["label"], ds["identity"], strict=True):
        assert label_to_identity.setdefault(label, identity) == identity
    assert ds[0]["image"].size == (64, 64)
    card = (out / "README.md").read_text()
    assert "data/train-*" in card and "Intended use" in card
    assert json.loads((out / "stats.json").read_text())["images_kept"] == len(ds)
    # every table has the Features declared in facesynth.schema
    from facesynth.filters.quality import QualityFilter

    scores = list(QualityFilter.score_columns)
    assert (
        ds.features == schema.dataset_features(scores) == schema.features_of(next((out / "data").glob("*")))
    )
    assert schema.features_of(out / layout.IDENTITIES) == schema.IDENTITY_TABLE
    assert schema.features_of(out / layout.REJECTED) == schema.rejected_features(scores)
    assert not (out / layout.UNITS).exists()


def test_regenerating_a_row_gives_the_same_image(smoke_run: tuple[Path, dict]) -> None:
    out, _ = smoke_run
    table = pq.read_table(sorted((out / "data").glob("*.parquet"))[-1]).to_pylist()
    row = table[-1]
    image = facesynth.regenerate(out, row["identity"], row["attempt"])
    assert encode_image(image, "jpeg", 95) == row["image"]["bytes"]


def test_rerun_on_finished_output_is_a_no_op_and_other_recipe_is_refused(
    smoke_run: tuple[Path, dict], capsys: pytest.CaptureFixture
) -> None:
    out, stats = smoke_run
    before = read_all(out)
    assert main(["run", str(SMOKE), "--out", str(out), *SETS, "--no-progress"]) == 0
    assert read_all(out) == before
    assert main(["run", str(SMOKE), "--out", str(out), *SETS, "--set", "seed=7", "--no-progress"]) == 2
    assert "different recipe" in capsys.readouterr().err
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images_kept"] == stats["images_kept"]
    assert info["columns"][:3] == ["image", "label", "identity"] and "quality_blur" in info["columns"]


def _start_and_stop_after(
    cmd: list[str], out: Path, units_done: int, sig: int, group: bool = False
) -> subprocess.Popen:
    """Start a run and send ``sig`` once ``units_done`` units are finished; with ``group``, to the run
    and every process it started, as a terminal's Ctrl-C does."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=group
    )
    deadline = time.monotonic() + 180
    while len(list((out / layout.UNITS).glob("unit-*[0-9].json"))) < units_done:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.02)
    (os.killpg if group else os.kill)(proc.pid, sig)
    proc.wait(timeout=60)
    return proc


def _alive(group: int) -> bool:
    """Whether a process of process group ``group`` still runs (zombies left to init do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):  # it ended while we looked
            continue
        if int(pgrp) == group and state != "Z":
            return True
    return False


@pytest.mark.slow
def test_ctrl_c_then_sigkill_then_rerun_equals_uninterrupted(
    tmp_path: Path, smoke_tables: dict, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "killed"
    args = ["run", str(SMOKE), "--out", str(out), *SETS, "--no-progress"]
    cmd = [sys.executable, "-m", "facesynth.cli", *args]
    # Ctrl-C reaches the encoder processes too: they leave it to the run, and stop with it.
    encoders = ["--set", "writer.encode_processes=2"]
    interrupted = _start_and_stop_after([*cmd, *encoders], out, 1, signal.SIGINT, group=True)
    err = interrupted.stderr.read().strip().splitlines() if interrupted.stderr else []
    assert interrupted.returncode == 1 and "interrupted" in err[-1] and "Traceback" not in "\n".join(err)
    deadline = time.monotonic() + 30
    while _alive(interrupted.pid):  # the encoder processes and the fork server exit after the run
        assert time.monotonic() < deadline, "processes of the interrupted run are still running"
        time.sleep(0.05)

    killed = _start_and_stop_after(cmd, out, 3, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "data").exists(), "nothing is published before finalize"
    done_before = len(list((out / layout.UNITS).glob("unit-*[0-9].json")))
    assert 3 <= done_before < 8

    # Info and the rerun in this process: only the interrupted runs need to be processes of their own.
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["units_done"] == done_before
    assert main(args) == 0
    assert read_all(out) == smoke_tables


def test_identities_below_minimum_are_dropped_and_labels_stay_dense(tmp_path: Path) -> None:
    # A strict blur threshold: most tiny images fail, so some identities cannot reach 3 of 4 in 8 attempts.
    overrides = ["identities.count=8", "filters.0.min_blur=240", "output.identities_per_unit=8"]
    stats = facesynth.run(SMOKE, out=tmp_path, overrides=overrides, progress=False)
    identities = pq.read_table(tmp_path / layout.IDENTITIES).to_pylist()
    dropped = [r for r in identities if r["label"] == -1]
    kept = [r for r in identities if r["label"] >= 0]
    assert dropped and kept, "the threshold should drop some identities and keep others"
    assert all("attempts" in r["drop_reason"] and r["attempts"] == 8 for r in dropped)
    assert sorted(r["label"] for r in kept) == list(range(len(kept)))
    rows = [
        row for p in sorted((tmp_path / "data").glob("*.parquet")) for row in pq.read_table(p).to_pylist()
    ]
    assert {r["identity"] for r in rows} == {r["identity"] for r in kept}
    assert all(r["quality_blur"] >= 240 for r in rows)
    rejected = pq.read_table(tmp_path / layout.REJECTED).to_pylist()
    assert rejected and all(r["rejected_by"] == "quality" and r["quality_blur"] < 240 for r in rejected)
    generated = stats["images_generated"]
    assert stats["filter_pass_rates"]["quality"] == pytest.approx((generated - len(rejected)) / generated)
    assert stats["images_kept"] == len(rows) < generated - len(rejected)  # dropped identities' images go too


def test_units_run_two_at_a_time_equal_units_run_alone(tmp_path: Path) -> None:
    """Interleaving units (one generates while the other's round is filtered) does not change rows."""
    from facesynth.finalize import finalize
    from facesynth.prepare import prepare
    from facesynth.recipe import load_recipe
    from facesynth.runner import run_units

    recipe = load_recipe(SMOKE, ["identities.count=8", "output.identities_per_unit=2"])
    outputs = []
    for name, groups in (("together", [[0, 1, 2, 3]]), ("alone", [[0], [1], [2], [3]])):
        out = tmp_path / name
        prepare(recipe, out, progress=False)
        for units in groups:
            run_units(out, units, progress=False)
        finalize(out)
        outputs.append(read_all(out))
    assert outputs[0] == outputs[1]
    assert len(outputs[0]["rejected"]) > 0, "the quality filter should reject some, so rounds > 1"


def test_progress_bar_figures_are_true(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """The bar's images and pass rate count the same finished identities: never above 100%, and the
    final figures equal the dataset's."""
    import re

    stats = facesynth.run(SMOKE, out=tmp_path, overrides=["identities.count=8"], progress=True)
    bar = capfd.readouterr().err
    figures = re.findall(r"images=(\d+), pass_rate=(\d+)%", bar)
    assert figures, bar
    assert all(int(rate) <= 100 for _, rate in figures)
    assert figures[-1] == (str(stats["images_kept"]), f"{100 * stats['pass_rate']:.0f}")
