"""Margin heads: the published margin formulas, Partial FC sampling, and that they train."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facesynth.recognition.heads import AdaFaceHead, ArcFaceHead, CosFaceHead


def _cosines(head, emb):
    return F.linear(F.normalize(emb), F.normalize(head.weight))


def test_arcface_adds_the_angle_margin_to_the_target_only() -> None:
    torch.manual_seed(0)
    head = ArcFaceHead(8, 5, s=64, m=0.5)
    emb, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    cos = _cosines(head, emb)
    logits = head.margin(cos.clone(), labels, emb.norm(dim=1, keepdim=True))
    theta = cos.gather(1, labels[:, None]).acos()
    expected_target = torch.where(
        theta + 0.5 < math.pi,
        torch.cos(theta + 0.5),
        cos.gather(1, labels[:, None]) - math.sin(math.pi - 0.5) * 0.5,
    )
    assert torch.allclose(logits.gather(1, labels[:, None]), 64 * expected_target, atol=1e-4)
    others = torch.ones_like(cos, dtype=torch.bool).scatter(1, labels[:, None], False)
    assert torch.allclose(logits[others], 64 * cos[others])


def test_cosface_subtracts_m_from_the_target_cosine() -> None:
    torch.manual_seed(1)
    head = CosFaceHead(8, 4, s=64, m=0.35)
    emb, labels = torch.randn(3, 8), torch.tensor([3, 0, 3])
    cos = _cosines(head, emb)
    expected = 64 * (cos - 0.35 * F.one_hot(labels, 4))
    assert torch.allclose(head.margin(cos, labels, emb.norm(dim=1, keepdim=True)), expected, atol=1e-5)


def test_adaface_margin_follows_the_feature_norm() -> None:
    head = AdaFaceHead(8, 4, m=0.4, h=0.333).eval()  # eval: EMA statistics fixed at 20 +- 100
    torch.manual_seed(2)
    emb, labels = torch.randn(2, 8), torch.tensor([1, 2])
    cos = _cosines(head, emb).clamp(-1 + 1e-3, 1 - 1e-3)
    # Norm at the running mean: scaler 0, so g_angle = 0 and g_add = m (CosFace with m = 0.4).
    at_mean = head.margin(cos, labels, torch.full((2, 1), 20.0))
    assert torch.allclose(at_mean, 64 * (cos - 0.4 * F.one_hot(labels, 4)), atol=1e-4)
    # A norm far above the mean (in units of the std) saturates scaler at +1: cos(theta - m) - 2m.
    head.batch_std.fill_(1.0)
    high = head.margin(cos, labels, torch.full((2, 1), 1e4))
    target = cos.gather(1, labels[:, None])
    expected = torch.cos((target.acos() - 0.4).clamp(1e-3, math.pi - 1e-3)) - 0.8
    assert torch.allclose(high.gather(1, labels[:, None]), 64 * expected, atol=1e-4)


def test_adaface_updates_its_norm_statistics_when_training() -> None:
    head = AdaFaceHead(8, 4).train()
    head(torch.randn(16, 8) * 3, torch.randint(0, 4, (16,)))
    assert head.batch_mean.item() != 20 and head.batch_std.item() != 100


def test_partial_fc_keeps_every_positive_and_renumbers_labels() -> None:
    torch.manual_seed(3)
    head = ArcFaceHead(8, 100, sample_rate=0.2)
    labels = torch.tensor([5, 77, 5, 42])
    weight, new = head.sample(labels, torch.Generator().manual_seed(0))
    assert weight.shape == (20, 8)
    assert torch.equal(weight[new], head.weight[labels])  # each label still points at its own centre
    again, _ = head.sample(labels, torch.Generator().manual_seed(0))
    assert torch.equal(weight, again)  # the sampling is a function of the generator's seed


@pytest.mark.parametrize("cls", [ArcFaceHead, CosFaceHead, AdaFaceHead])
def test_heads_learn_separable_classes(cls) -> None:
    torch.manual_seed(4)
    centres = F.normalize(torch.randn(6, 16))
    labels = torch.arange(6).repeat(20)
    x = centres[labels] * 10 + torch.randn(120, 16)
    net = torch.nn.Linear(16, 16)
    head = cls(16, 6, sample_rate=0.5 if cls is ArcFaceHead else 1.0)
    opt = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    first = None
    for step in range(60):
        loss = head(net(x), labels, torch.Generator().manual_seed(step))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
