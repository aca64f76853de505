"""Partial FC across 2 real processes (gloo): the sharded head computes the single-process loss and gradients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from scale.scale_helpers import free_port

from facesynth.recognition.heads import HEADS, class_shard, initial_centres

FIXTURE = Path(__file__).parent / "fixtures" / "partial_fc_v2.npz"
DIM, CLASSES, BATCH, WORLD = 64, 11, 6, 2  # 11 classes: the two slices differ in size (6 and 5)
CASES = [("arcface", {"m": 0.5}), ("cosface", {"m": 0.35}), ("adaface", {})]


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch (WORLD x BATCH rows); rank r holds rows [r * BATCH, (r + 1) * BATCH)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * BATCH, DIM, generator=g) * 4, torch.randint(
        0, CLASSES, (WORLD * BATCH,), generator=g
    )


def single_process(
    name: str, kw: dict, embeddings: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Loss and gradients of the full head on the whole global batch, and of a linear layer before it."""
    torch.manual_seed(1)
    net = torch.nn.Linear(DIM, DIM)
    head = HEADS[name](DIM, CLASSES, s=64, seed=3, **kw)
    x = embeddings.clone().requires_grad_()
    loss = head(net(x), labels)
    loss.backward()
    return {"loss": loss.detach(), "x": x.grad, "weight": head.weight.grad, "net": net.weight.grad}


def close(got: torch.Tensor | np.ndarray, expected: torch.Tensor | np.ndarray) -> bool:
    """Equal up to float32 summation order: max abs diff <= 1e-5 of the largest expected value."""
    got, expected = np.asarray(got), np.asarray(expected)
    return got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    embeddings, labels = inputs()
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    results = {}
    for name, kw in CASES:
        torch.manual_seed(1)
        net = torch.nn.Linear(DIM, DIM)
        head = HEADS[name](DIM, CLASSES, s=64, seed=3, rank=rank, world=WORLD, **kw)
        x = embeddings[mine].clone().requires_grad_()
        loss = head(net(x), labels[mine])
        loss.backward()
        # What DDP does to a data-parallel backbone's gradients: the mean over processes.
        torch.distributed.all_reduce(net.weight.grad)
        net.weight.grad /= WORLD
        results.update(
            {
                f"{name}/loss": loss.detach(),
                f"{name}/x": x.grad,
                f"{name}/weight": head.weight.grad,
                f"{name}/init": head.weight.detach(),
                f"{name}/net": net.weight.grad,
            }
        )
        # Partial FC sampling on each slice: positives kept, only sampled centres get gradients.
        sampled = HEADS[name](DIM, CLASSES, s=64, seed=3, rank=rank, world=WORLD, sample_rate=0.5, **kw)
        sampled(embeddings[mine], labels[mine], torch.Generator().manual_seed(10 + rank)).backward()
        results[f"{name}/sampled_rows"] = (sampled.weight.grad.abs().sum(1) > 0).nonzero().squeeze(1)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("sharded")
    mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, start_method="fork")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kw"), CASES)
def test_sharded_head_equals_the_single_process_head(two_ranks, name, kw) -> None:
    embeddings, labels = inputs()
    full = single_process(name, kw, embeddings, labels)
    for rank, got in enumerate(two_ranks):
        start, count = class_shard(CLASSES, rank, WORLD)
        rows = slice(rank * BATCH, (rank + 1) * BATCH)
        assert torch.equal(
            got[f"{name}/init"], initial_centres(CLASSES, DIM, 0, CLASSES, 3)[start : start + count]
        )
        assert abs(got[f"{name}/loss"] - full["loss"]) < 1e-5 * full["loss"]
        assert close(got[f"{name}/weight"], full["weight"][start : start + count])
        # Each rank's embeddings get world x the loss gradient, so DDP's average is the single-process update.
        assert close(got[f"{name}/x"], WORLD * full["x"][rows])
        assert close(got[f"{name}/net"], full["net"])
        positives = {int(y) - start for y in labels if start <= y < start + count}
        sampled = set(got[f"{name}/sampled_rows"].tolist())
        assert positives <= sampled and len(sampled) == max(int(0.5 * count), len(positives))


@pytest.mark.slow
def test_sharded_head_equals_arcface_torch_partial_fc_v2(two_ranks) -> None:
    """Numbers of insightface's own PartialFC_V2 on these inputs (fixtures/README.md says how they were made)."""
    expected = np.load(FIXTURE)
    # arcface_torch clamps each sample's softmax probability at 1e-30 (its loss, not its gradient, saturates
    # at 69.08); DIM 64 keeps every sample's loss below that, so the two losses are comparable.
    for rank, got in enumerate(two_ranks):
        assert abs(got["cosface/loss"].item() - expected["cosface_loss"]) < 1e-5
        assert abs(got["arcface/loss"].item() - expected["arcface_loss"]) < 1e-5
        # arcface_torch applies ArcFace's margin under no_grad (its gradient skips the margin's derivative),
        # so gradients are comparable for CosFace only.
        assert close(got["cosface/weight"], expected[f"cosface_weight_grad{rank}"])
        assert close(got["cosface/x"], expected[f"cosface_x_grad{rank}"])


def _overflow_worker(rank: int, port: int, out: str) -> None:
    from facesynth.recognition.train import share_head_overflow_

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    results = {}
    for shared in (False, True):
        backbone = torch.nn.Parameter(torch.ones(4))
        head = torch.nn.Parameter(torch.full((3, 4), 0.5 + rank))  # this process's slice of the centres
        optimizer = torch.optim.SGD([backbone, head], lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        scaler.scale((head @ backbone).sum()).backward()
        torch.distributed.all_reduce(backbone.grad)  # what DDP does: the backbone's gradient is shared
        if rank == 1:
            head.grad[0, 0] = float("inf")  # an fp16 overflow in rank 1's slice only
        if shared:
            share_head_overflow_([head])
        scaler.step(optimizer)
        scaler.update()
        results[shared] = {"backbone": backbone.detach().clone(), "scale": torch.tensor(scaler.get_scale())}
    torch.save(results, Path(out) / f"overflow{rank}.pt")
    torch.distributed.destroy_process_group()


def test_an_overflow_in_one_head_slice_skips_the_step_in_every_process(tmp_path) -> None:
    mp.start_processes(_overflow_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="fork")
    ranks = [torch.load(tmp_path / f"overflow{r}.pt", weights_only=True) for r in range(WORLD)]
    # Without sharing, rank 0 steps and rank 1 skips: the backbone replicas part ways.
    assert not torch.equal(ranks[0][False]["backbone"], ranks[1][False]["backbone"])
    # Shared: both skip (backbone untouched) and both lower the loss scale alike.
    for rank in ranks:
        assert torch.equal(rank[True]["backbone"], torch.ones(4))
        assert float(rank[True]["scale"]) == 2.0**9
