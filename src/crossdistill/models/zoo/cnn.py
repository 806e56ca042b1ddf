"""A small plain CNN: the zoo's student (``width=8`` ≈ 6k parameters, ``width=16`` ≈ 25k)."""

from __future__ import annotations

import torch
from torch import nn

from crossdistill.models.registry import MODELS


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


@MODELS.register("cnn")
class SmallCNN(nn.Module):
    """Three conv stages (``block1..3``, widths w, 2w, 4w; 2× max-pooling after the first two),
    global average pooling (``pool``) and a linear classifier (``fc``)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.block1 = nn.Sequential(_conv(in_channels, width), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(_conv(width, 2 * width), nn.MaxPool2d(2))
        self.block3 = _conv(2 * width, 4 * width)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.block3(self.block2(self.block1(x)))))
