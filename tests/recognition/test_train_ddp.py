"""facesynth train with 2 real processes (gloo on CPU): ``accelerate launch`` of the CLI, sharded data and
head, files written once, and a SIGKILL of both processes resumed to the same model as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
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
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def _train_rank(rank: int, port: int, dataset: Path, recipe: Path, out: Path) -> None:
    """One process of a 2-process run forked from pytest: the environment torchrun / accelerate launch set."""
    from accelerate.state import AcceleratorState

    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)  # the parent's one-process state is inherited
    train(dataset, load_train_recipe(recipe), out, progress=False)


def _fork_run(dataset: Path, recipe: Path, out: Path) -> list:
    """A 2-process gloo run of ``train()`` in processes forked from this one (no imports to repeat)."""
    import accelerate  # noqa: F401  imported once here rather than in every forked process
    import torch._dynamo  # noqa: F401  (torch.optim and DDP import it)
    import torch.onnx  # noqa: F401

    port = free_port()
    procs = [
        mp.get_context("fork").Process(target=_train_rank, args=(r, port, dataset, recipe, out))
        for r in (0, 1)
    ]
    for p in procs:
        p.start()
    return procs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same 2-process run three ways: ``accelerate launch`` of the CLI, uninterrupted; and a run
    whose two processes are SIGKILLed after a checkpoint, then resumed by two new processes."""
    root = tmp_path_factory.mktemp("ddp")
    dataset = make_face_dataset(root / "data", identity_faces()[:16], 5)
    recipe = root / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    straight, resumed = root / "straight", root / "resumed"
    launched = _launch(dataset, recipe, straight)
    killed = _fork_run(dataset, recipe, resumed)
    deadline = time.monotonic() + 240
    while not (resumed / "checkpoint.pt").exists() and all(p.is_alive() for p in killed):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    for p in killed:
        os.kill(p.pid, signal.SIGKILL)
    for p in killed:
        p.join()
    assert [p.exitcode for p in killed] == [-signal.SIGKILL] * 2, "the run finished before it could be killed"
    assert not (resumed / "model.safetensors").exists()
    again = _fork_run(dataset, recipe, resumed)
    for p in again:
        p.join(timeout=300)
    assert [p.exitcode for p in again] == [0, 0]
    _, err = launched.communicate(timeout=300)
    assert launched.returncode == 0, err.decode()[-3000:]
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
