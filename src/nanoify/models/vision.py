"""Small vision models whose pretrained weights ship beside the project (``../shared/models``).

ResNet-20 for CIFAR-10 is the architecture of the ResNet paper's CIFAR experiments (He et al. 2015, §4.2):
a 3×3 convolution with 16 channels, three stages of three basic blocks with 16, 32 and 64 channels (stride 2
at the start of stages 2 and 3), global average pooling and a linear classifier. Shortcuts are "option A":
where the shape changes, the input is subsampled by 2 and zero-padded with ``planes // 4`` channels on each
side, so the shortcut has no weights. The parameter names match the published checkpoint
(``conv1``, ``bn1``, ``layer{1,2,3}.{0,1,2}.{conv1,bn1,conv2,bn2}``, ``linear``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2, zero-pad the channels."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """conv-bn-relu, conv-bn, add the shortcut, relu."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _PadShortcut(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs; ``blocks=(3, 3, 3)`` is ResNet-20."""

    def __init__(self, blocks: tuple[int, int, int] = (3, 3, 3), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for i, (n, planes) in enumerate(zip(blocks, (16, 32, 64), strict=True)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet20(num_classes: int = 10, **_: Any) -> CifarResNet:
    """ResNet-20 (0.27M parameters) for CIFAR-10."""
    return CifarResNet((3, 3, 3), num_classes)
