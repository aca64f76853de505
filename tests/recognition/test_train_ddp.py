"""facesynth train under ``accelerate launch`` with 2 real processes (gloo on CPU): sharded data and head,
files written once, and a SIGKILL of the whole job resumed to the same model as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from recog_helpers import identity_faces, make_face_dataset
from safetensors.torch import load_file
from scale.scale_helpers import free_port

from facesynth.errors import UserInputError
from facesynth.recognition.train import load_train_recipe, train

# 16 identities x 5 views = 80 rows; 2 processes x 4 rows = 8 per step, 10 steps per epoch, 2 epochs.
RECIPE = {
    "name": "ddp",
    "seed": 0,
    "model": {"backbone": "r18", "width": 8, "layers": [1, 1, 1, 1], "embedding_size": 32, "input_size": 48},
    "head": {"name": "arcface", "s": 32, "m": 0.3, "sample_rate": 0.5},
    "data": {"batch_size": 4, "num_workers": 0},
    "optim": {"lr": 0.05, "clip_head_grad_norm": 5.0},
    "schedule": {"epochs": 2, "milestones": [1]},
    "log_every": 1,
    "checkpoint_every": 4,
}


def _launch(dataset: Path, recipe: Path, out: Path) -> subprocess.Popen:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "facesynth.cli", "train", str(dataset), "--recipe", str(recipe), "--out", str(out), "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A session of its own, so the kill takes the launcher and both training processes down together.
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same 2-process run uninterrupted, and SIGKILLed (all processes) after a checkpoint then resumed."""
    root = tmp_path_factory.mktemp("ddp")
    dataset = make_face_dataset(root / "data", identity_faces()[:16], 5)
    recipe = root / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    straight, resumed = root / "straight", root / "resumed"
    first = _launch(dataset, recipe, straight)
    killed = _launch(dataset, recipe, resumed)
    deadline = time.monotonic() + 240
    while not (resumed / "checkpoint.pt").exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (resumed / "model.safetensors").exists()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()[-3000:]
    again = _launch(dataset, recipe, resumed)
    _, err2 = again.communicate(timeout=300)
    assert again.returncode == 0, err2.decode()[-3000:]
    (straight / "stderr.txt").write_bytes(err)
    return {"dataset": dataset, "recipe": recipe, "straight": straight, "resumed": resumed}


@pytest.mark.slow
def test_two_processes_share_data_and_head_and_write_files_once(runs) -> None:
    straight = runs["straight"]
    err = (straight / "stderr.txt").read_text()
    # Each process reads its half of every global batch (EpochBatches' split, tested in test_train_data)
    # and holds its half of the 16 class centres.
    assert "process 0 of 2 reads batches of 4 rows, 10 per epoch; holds classes 0..7" in err
    assert "process 1 of 2 reads batches of 4 rows, 10 per epoch; holds classes 8..15" in err
    # 2 epochs of 80 rows in global batches of 8: 20 steps, each logged once (only process 0 writes).
    steps = [int(line.split(",")[0]) for line in (straight / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 21))
    assert sorted(p.name for p in straight.iterdir()) == [
        "checkpoint.pt", "dataset.json", "metrics.csv", "model.onnx", "model.safetensors", "stderr.txt", "train.yaml",
    ]  # fmt: skip
    state = torch.load(straight / "checkpoint.pt", weights_only=True)
    assert state["world"] == 2 and state["step"] == 20 and len(state["rng_cpu"]) == 2
    assert state["head"]["weight"].shape == (16, 32)  # the whole class matrix, gathered from both processes
    head_slot = max(state["optimizer"]["state"])
    assert state["optimizer"]["state"][head_slot]["momentum_buffer"].shape == (16, 32)


@pytest.mark.slow
def test_sigkill_of_two_processes_resumes_to_the_uninterrupted_model(runs) -> None:
    a = load_file(str(runs["straight"] / "model.safetensors"))
    b = load_file(str(runs["resumed"] / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [
        [line.split(",")[:3] for line in (runs[r] / "metrics.csv").read_text().splitlines()]
        for r in ("straight", "resumed")
    ]
    assert losses[0] == losses[1]


def test_a_run_resumes_only_with_its_process_count(runs) -> None:
    with pytest.raises(UserInputError, match="written by a run of 2 process.*--num_processes 2"):
        train(runs["dataset"], load_train_recipe(runs["recipe"]), runs["straight"], progress=False)
