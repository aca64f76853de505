"""IResNet face-recognition backbones in insightface ``arcface_torch``'s exact state-dict layout.

Keys and shapes equal arcface_torch's ``backbones/iresnet.py`` (conv1, bn1, prelu, layer1..4 of
IBasicBlock with bn1/conv1/bn2/prelu/conv2/bn3/downsample.0/1, bn2, dropout, fc, features), so its
published checkpoints load with ``strict=True`` and ours load there. Input: [N, 3, 112, 112] RGB
scaled to [-1, 1]; output: [N, num_features] (not normalised).

``width`` (channels of layer1; arcface_torch uses 64) and ``layers`` (blocks per stage) exist only
to make tiny CPU models for tests; with their defaults the model is the published one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Blocks per stage, as arcface_torch's get_model names them.
ARCHS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN-conv-BN-PReLU-conv(stride)-BN plus shortcut."""

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """IResNet backbone; ``fp16`` runs the convolutions under CUDA float16 autocast as arcface_torch does."""

    def __init__(
        self,
        layers: Sequence[int] = ARCHS["r50"],
        num_features: int = 512,
        dropout: float = 0.0,
        fp16: bool = False,
        width: int = 64,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be 4 positive block counts, got {list(layers)}")
        self.fp16 = fp16
        self.num_features = num_features
        self.input_size = input_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        cin = width
        for index, blocks in enumerate(layers):
            planes = width * 2**index
            stage, cin = self._stage(cin, planes, blocks), planes
            setattr(self, f"layer{index + 1}", stage)
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        spatial = input_size // 16  # four stride-2 stages: 112 -> 7
        self.fc = nn.Linear(cin * spatial * spatial, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self._init_weights()

    @staticmethod
    def _stage(cin: int, planes: int, blocks: int) -> nn.Sequential:
        # The first block of every stage halves the resolution, so it always has a projection shortcut.
        downsample = nn.Sequential(
            nn.Conv2d(cin, planes, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
        )
        return nn.Sequential(
            IBasicBlock(cin, planes, 2, downsample), *(IBasicBlock(planes, planes) for _ in range(blocks - 1))
        )

    def _init_weights(self) -> None:
        # arcface_torch's initialisation: N(0, 0.1) convs, unit BNs, and a frozen unit scale on `features`.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16 and x.is_cuda):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x.float()))


def iresnet(name: str, **kw) -> IResNet:
    """Build an arcface_torch IResNet by its ``get_model`` name: "r18", "r34", "r50", "r100" or "r200".

    Keyword options go to ``IResNet`` (``num_features``, ``dropout``, ``fp16``, ``width``, ``layers``).
    """
    if name not in ARCHS:
        raise ValueError(f"unknown IResNet {name!r}; choose one of {', '.join(ARCHS)}")
    kw.setdefault("layers", ARCHS[name])
    return IResNet(**kw)
