"""Margin-softmax classification heads: ArcFace, CosFace, AdaFace, with optional Partial FC sampling.

Each head owns the class centres (``weight``, [num_classes, dim]) and returns the cross-entropy loss of
a batch of embeddings. The margins follow the published code: ArcFace as insightface's ``ArcFace`` loss
(cos(theta + m), with the ``theta > pi - m`` fallback), CosFace as ``CosFace`` (cos - m), AdaFace as
mk-minchul/AdaFace's ``head.py`` (feature-norm-adaptive angular + additive margin, EMA batch statistics).

Partial FC (An et al., insightface ``PartialFC_V2``): with ``sample_rate < 1`` each step uses the
batch's positive centres plus random negatives up to ``sample_rate * num_classes`` centres.

Across processes (``world > 1``, torch.distributed initialised) the class matrix is sharded as
``PartialFC_V2`` shards it: rank r holds the centres of its contiguous slice of labels, every rank
sees the whole global batch (embeddings all-gathered, gradients flowing back), samples its own slice
(positives plus negatives up to ``sample_rate * num_local``), and the softmax is computed across the
slices (all-reduce of the row maxima and of the sums of exponentials), so the loss is the
single-process loss of the global batch. The gradient a process gets for its local embeddings is
``world`` times the loss's gradient: DDP then averages the backbone's gradients over processes,
which makes the backbone's update the single-process one.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

EPS = 1e-3  # AdaFace clamps cosines and angles this far from the ends
INIT_BLOCK = 1 << 16  # rows of the initial class matrix drawn per seeded block


def class_shard(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """(first label, number of labels) of rank's slice: contiguous, the first num_classes % world one larger."""
    base, extra = divmod(num_classes, world)
    return base * rank + min(rank, extra), base + int(rank < extra)


def initial_centres(num_classes: int, dim: int, start: int, count: int, seed: int) -> torch.Tensor:
    """Rows [start, start + count) of the N(0, 0.01) initial class matrix of ``seed``.

    Drawn in fixed blocks of INIT_BLOCK rows, each from its own generator, so a process makes only its
    own slice and the full matrix is the same whatever the number of processes.
    """
    rows = []
    for block in range(start // INIT_BLOCK, (start + count + INIT_BLOCK - 1) // INIT_BLOCK):
        first = block * INIT_BLOCK
        size = min(INIT_BLOCK, num_classes - first)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + block)
        values = torch.normal(0, 0.01, (size, dim), generator=generator)
        lo, hi = max(start, first) - first, min(start + count, first + size) - first
        rows.append(values[lo:hi])
    return torch.cat(rows) if rows else torch.zeros(0, dim)


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0; backward sums every rank's gradient of the gathered rows, times world."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # each rank's loss slice touches every embedding
        # times world: DDP's averaging of the backbone gradients then gives the global-batch gradient
        return grad.view(world, -1, *grad.shape[1:])[rank] * world


class _ShardedCrossEntropy(torch.autograd.Function):
    """Cross-entropy of logits split by columns across ranks; labels are local indices or -1 (elsewhere)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        top = logits.max(dim=1, keepdim=True).values
        dist.all_reduce(top, dist.ReduceOp.MAX)
        exp = (logits - top).exp()
        total = exp.sum(dim=1, keepdim=True)
        dist.all_reduce(total)
        rows = (labels >= 0).nonzero().squeeze(1)
        target = torch.zeros_like(total)
        target[rows] = logits[rows, labels[rows]].unsqueeze(1) - top[rows]
        dist.all_reduce(target)  # exactly one rank holds each row's target class
        ctx.save_for_backward(exp.div_(total), labels)
        return (total.log() - target).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        prob, labels = ctx.saved_tensors
        rows = (labels >= 0).nonzero().squeeze(1)
        prob = prob.clone()
        prob[rows, labels[rows]] -= 1
        return prob * (grad / len(prob)), None


class MarginHead(nn.Module):
    """Shared parts: class centres (this rank's slice), cosine logits, Partial FC sampling and the loss."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        s: float = 64.0,
        sample_rate: float = 1.0,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.s = s
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.rank, self.world = rank, world
        self.class_start, self.num_local = class_shard(num_classes, rank, world)
        self.weight = nn.Parameter(initial_centres(num_classes, dim, self.class_start, self.num_local, seed))

    def sample(
        self, labels: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres used this step and the labels renumbered into them (all centres when sample_rate is 1).

        ``labels`` index this rank's slice; -1 (a class of another rank) stays -1.
        """
        num_sample = int(self.sample_rate * self.num_local)
        if num_sample >= self.num_local:
            return self.weight, labels
        mine = labels >= 0
        positive = torch.unique(labels[mine], sorted=True)
        if positive.numel() >= num_sample:
            index = positive
        else:
            score = torch.rand(self.num_local, generator=generator).to(labels.device)
            score[positive] = 2.0  # positives always kept
            index = torch.topk(score, k=num_sample)[1].sort()[0]
        return self.weight[index], torch.where(mine, torch.searchsorted(index, labels), labels)

    def margin(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the margin on each row's target column; rows labelled -1 get none."""
        raise NotImplementedError

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean loss of the batch (across processes: of the global batch, the same on every rank)."""
        embeddings = embeddings.float()
        if self.world > 1:
            embeddings = _GatherRows.apply(embeddings)
            parts = [torch.empty_like(labels) for _ in range(self.world)]
            dist.all_gather(parts, labels.contiguous())
            labels = torch.cat(parts) - self.class_start
            labels = torch.where((labels >= 0) & (labels < self.num_local), labels, -1)
        norms = embeddings.norm(dim=1, keepdim=True)
        weight, labels = self.sample(labels, generator)
        cosine = F.linear(F.normalize(embeddings), F.normalize(weight.float())).clamp(-1 + 1e-7, 1 - 1e-7)
        logits = self.margin(cosine, labels, norms)
        if self.world > 1:
            return _ShardedCrossEntropy.apply(logits.float(), labels)
        return F.cross_entropy(logits, labels)


def _targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column index per row (0 where the row's class lives elsewhere) and whether the row has it here."""
    mine = labels >= 0
    return labels.clamp_min(0)[:, None], mine[:, None]


class ArcFaceHead(MarginHead):
    """ArcFace (Deng et al. 2019): s * cos(theta + m) on the target class; s 64, m 0.5 by default."""

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.5, **kw) -> None:
        super().__init__(dim, num_classes, s, **kw)
        self.m = m

    def margin(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        column, mine = _targets(labels)
        target = cosine.gather(1, column)
        sine = (1.0 - target * target).clamp_min(0).sqrt()
        with_margin = target * math.cos(self.m) - sine * math.sin(self.m)
        # Past theta = pi - m, cos(theta + m) would increase again; insightface falls back to cos - m sin m.
        with_margin = torch.where(
            target > math.cos(math.pi - self.m), with_margin, target - math.sin(math.pi - self.m) * self.m
        )
        return self.s * cosine.scatter(1, column, torch.where(mine, with_margin, target))


class CosFaceHead(MarginHead):
    """CosFace (Wang et al. 2018): s * (cos - m) on the target class; s 64, m 0.35 by default."""

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.35, **kw) -> None:
        super().__init__(dim, num_classes, s, **kw)
        self.m = m

    def margin(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        column, mine = _targets(labels)
        return self.s * cosine.scatter_add(1, column, -self.m * mine.to(cosine.dtype))


class AdaFaceHead(MarginHead):
    """AdaFace (Kim et al. 2022): the margin adapts to the feature norm (image quality); m 0.4, h 0.333, s 64."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        s: float = 64.0,
        m: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
        **kw,
    ) -> None:
        super().__init__(dim, num_classes, s, **kw)
        self.m, self.h, self.t_alpha = m, h, t_alpha
        # EMA of the batch's feature-norm mean and std; initial values as published.
        self.register_buffer("batch_mean", torch.ones(1) * 20)
        self.register_buffer("batch_std", torch.ones(1) * 100)

    def margin(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        safe_norms = norms.clamp(0.001, 100).detach()
        if self.training:
            with torch.no_grad():
                mean, std = safe_norms.mean(), safe_norms.std()
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * mean)
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * std)
        scaler = ((safe_norms - self.batch_mean) / (self.batch_std + EPS) * self.h).clamp(-1, 1)
        column, mine = _targets(labels)
        one_hot = torch.zeros_like(cosine).scatter_(1, column, mine.to(cosine.dtype))
        # Angular margin g_angle = -m * scaler, then additive margin g_add = m + m * scaler, on the target only.
        theta = cosine.clamp(-1 + EPS, 1 - EPS).acos() + one_hot * (-self.m * scaler)
        cosine = theta.clamp(EPS, math.pi - EPS).cos() - one_hot * (self.m + self.m * scaler)
        return self.s * cosine


HEADS: dict[str, type[MarginHead]] = {"arcface": ArcFaceHead, "cosface": CosFaceHead, "adaface": AdaFaceHead}
