"""Margin-softmax classification heads: ArcFace, CosFace, AdaFace, with optional Partial FC sampling.

Each head owns the class centres (``weight``, [num_classes, dim]) and returns the cross-entropy loss of
a batch of embeddings. The margins follow the published code: ArcFace as insightface's ``ArcFace`` loss
(cos(theta + m), with the ``theta > pi - m`` fallback), CosFace as ``CosFace`` (cos - m), AdaFace as
mk-minchul/AdaFace's ``head.py`` (feature-norm-adaptive angular + additive margin, EMA batch statistics).

Partial FC (An et al., insightface ``PartialFC_V2``): with ``sample_rate < 1`` each step uses the
batch's positive centres plus random negatives up to ``sample_rate * num_classes`` centres.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-3  # AdaFace clamps cosines and angles this far from the ends


class MarginHead(nn.Module):
    """Shared parts: class centres, cosine logits, Partial FC sampling and the loss."""

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, sample_rate: float = 1.0) -> None:
        super().__init__()
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.s = s
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.weight = nn.Parameter(torch.normal(0, 0.01, (num_classes, dim)))

    def sample(
        self, labels: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres used this step and the labels renumbered into them (all centres when sample_rate is 1)."""
        num_sample = int(self.sample_rate * self.num_classes)
        if num_sample >= self.num_classes:
            return self.weight, labels
        positive = torch.unique(labels, sorted=True)
        if positive.numel() >= num_sample:
            index = positive
        else:
            score = torch.rand(self.num_classes, generator=generator).to(labels.device)
            score[positive] = 2.0  # positives always kept
            index = torch.topk(score, k=num_sample)[1].sort()[0]
        return self.weight[index], torch.searchsorted(index, labels)

    def margin(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        embeddings = embeddings.float()
        norms = embeddings.norm(dim=1, keepdim=True)
        weight, labels = self.sample(labels, generator)
        cosine = F.linear(F.normalize(embeddings), F.normalize(weight.float())).clamp(-1 + 1e-7, 1 - 1e-7)
        return F.cross_entropy(self.margin(cosine, labels, norms), labels)


class ArcFaceHead(MarginHead):
    """ArcFace (Deng et al. 2019): s * cos(theta + m) on the target class; s 64, m 0.5 by default."""

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.5, sample_rate: float = 1.0):
        super().__init__(dim, num_classes, s, sample_rate)
        self.m = m

    def margin(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        target = cosine.gather(1, labels[:, None])
        sine = (1.0 - target * target).clamp_min(0).sqrt()
        with_margin = target * math.cos(self.m) - sine * math.sin(self.m)
        # Past theta = pi - m, cos(theta + m) would increase again; insightface falls back to cos - m sin m.
        with_margin = torch.where(
            target > math.cos(math.pi - self.m), with_margin, target - math.sin(math.pi - self.m) * self.m
        )
        return self.s * cosine.scatter(1, labels[:, None], with_margin)


class CosFaceHead(MarginHead):
    """CosFace (Wang et al. 2018): s * (cos - m) on the target class; s 64, m 0.35 by default."""

    def __init__(
        self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.35, sample_rate: float = 1.0
    ):
        super().__init__(dim, num_classes, s, sample_rate)
        self.m = m

    def margin(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        return self.s * cosine.scatter_add(1, labels[:, None], torch.full_like(cosine[:, :1], -self.m))


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
        sample_rate: float = 1.0,
    ) -> None:
        super().__init__(dim, num_classes, s, sample_rate)
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
        one_hot = torch.zeros_like(cosine).scatter_(1, labels[:, None], 1.0)
        # Angular margin g_angle = -m * scaler, then additive margin g_add = m + m * scaler, on the target only.
        theta = cosine.clamp(-1 + EPS, 1 - EPS).acos() + one_hot * (-self.m * scaler)
        cosine = theta.clamp(EPS, math.pi - EPS).cos() - one_hot * (self.m + self.m * scaler)
        return self.s * cosine


HEADS: dict[str, type[MarginHead]] = {"arcface": ArcFaceHead, "cosface": CosFaceHead, "adaface": AdaFaceHead}
