"""A ResNet-style CNN for small images (He et al. 2016, arXiv:1512.03385), the zoo's teacher."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from crossdistill.models.registry import MODELS


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (1×1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@MODELS.register("resnet")
class ResNet(nn.Module):
    """``stem`` → ``layer1..n`` (stride 2 from the second on) → ``pool`` → ``fc``.

    Module names are stable tap paths: ``layer2``, ``layer3.0.conv2``, ``pool``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        cin = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks, strict=True), start=1):
            layers = [
                BasicBlock(cin if j == 0 else width, width, 2 if i > 1 and j == 0 else 1)
                for j in range(n)
            ]
            self.add_module(f"layer{i}", nn.Sequential(*layers))
            cin = width
        self.num_stages = len(widths)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.pool(x))
