"""A multi-layer perceptron on flattened inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from crossdistill.models.registry import MODELS


@MODELS.register("mlp")
class MLP(nn.Module):
    """``flatten`` → (Linear, ReLU) × len(hidden) as ``hidden`` → ``fc``."""

    def __init__(
        self, in_features: int = 784, num_classes: int = 10, hidden: Sequence[int] = (128,)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.flatten(x)))
