"""1-D CNNs over multichannel sensor windows ``(B, C, T)`` -> class logits.

Build them with ``crossdistill.build_model("sensors_nets:Conv1dNet", {...})`` (this folder on
``sys.path`` / ``PYTHONPATH``) so that a run records how to rebuild them.
"""

from __future__ import annotations

import torch
from torch import nn


class Conv1dNet(nn.Module):
    """Input standardisation, ``len(widths)`` conv blocks (conv, BatchNorm, ReLU, halve time),
    global average pooling over time, a linear head.

    The first layer is a BatchNorm over the input channels: it learns each channel's mean and
    variance from the training data, so the net reads raw sensor units and the exported model
    needs no preprocessing outside the graph.
    """

    def __init__(
        self,
        in_channels: int = 6,
        num_classes: int = 4,
        widths: list[int] | None = None,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        widths = [32, 64, 64] if widths is None else list(widths)
        layers: list[nn.Module] = [nn.BatchNorm1d(in_channels)]
        channels = in_channels
        for width in widths:
            layers += [
                nn.Conv1d(channels, width, kernel_size, padding=kernel_size // 2, bias=False),
                nn.BatchNorm1d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool1d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=-1))
