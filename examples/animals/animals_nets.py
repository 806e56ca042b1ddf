"""The two models of the animals example, plain PyTorch: nothing here imports crossdistill.

``AnimalTeacher`` stands for a model trained elsewhere (RGB, 56×56, the 10 fine animal classes);
``TwoHeadStudent`` is the small grayscale 28×28 student with a head for the data's 4 coarse
groups and one for the teacher's 10 classes. crossdistill builds both from their import paths
(``animals_nets:AnimalTeacher``, ``animals_nets:TwoHeadStudent``), so a run can rebuild them.
"""

from __future__ import annotations

import torch
from torch import nn


class _Block(nn.Module):
    """A ResNet basic block: two 3×3 convolutions and a shortcut (1×1 when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class AnimalTeacher(nn.Module):
    """A small ResNet for ``(B, 3, 56, 56)`` images: a stride-2 stem, three stages of basic
    blocks (``width``, 2×, 4× channels; 28, 14, 7 pixels), global pooling, a linear head."""

    def __init__(self, width: int = 24, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = _Block(width, width)
        self.layer2 = _Block(width, 2 * width, stride=2)
        self.layer3 = _Block(2 * width, 4 * width, stride=2)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


class TwoHeadStudent(nn.Module):
    """A plain CNN for ``(B, 1, 28, 28)`` images with two linear heads on one pooled feature:
    ``logits`` (the data's ``num_classes``) and ``teacher_logits`` (the teacher's
    ``teacher_classes``), returned as a dict."""

    def __init__(self, width: int = 8, num_classes: int = 4, teacher_classes: int = 10) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))

        self.body = nn.Sequential(
            conv(1, width),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14×14
            conv(width, 2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7×7
            conv(2 * width, 4 * width),
            nn.ReLU(),
        )
        self.logits = nn.Linear(4 * width, num_classes)
        self.teacher_logits = nn.Linear(4 * width, teacher_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feature = self.body(x).mean(dim=(2, 3))
        return {"logits": self.logits(feature), "teacher_logits": self.teacher_logits(feature)}
