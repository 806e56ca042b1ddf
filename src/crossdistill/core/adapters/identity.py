"""``identity``: the student tensor already has the teacher's shape."""

from __future__ import annotations

import torch

from crossdistill.core.adapters.base import ADAPTERS, Adapter, Shape, layouts_of
from crossdistill.core.taps import Layout


@ADAPTERS.register("identity")
class Identity(Adapter):
    """No parameters: chosen by ``auto`` when both shapes are equal."""

    priority = 0

    def __init__(self, student_shape: Shape, teacher_shape: Shape) -> None:
        super().__init__()

    @classmethod
    def bridges(
        cls,
        student: Shape,
        teacher: Shape,
        *,
        student_layout: Layout | None = None,
        teacher_layout: Layout | None = None,
    ) -> bool:
        s, t = layouts_of(student, teacher, student_layout, teacher_layout)
        return student == teacher and s == t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
