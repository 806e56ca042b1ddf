"""Losses between one student tensor and one teacher tensor, named by Knowledge keys.

Feature, relation, attention and embedding losses all read a tensor from each side by key
(``features/layer3``, ``attention/block2``, ``embedding``) rather than ``logits``. They subclass
:class:`PairLoss`, whose ``student``/``teacher`` hyper-parameters name the keys::

    losses:
      - name: fitnet
        params: {student: features/s2, teacher: features/t3}
        adapter: auto          # the Distiller maps the student tensor to the teacher's shape

The keys are declared in :meth:`PairLoss.needs`, so a missing tap fails before training with the
key's name; :meth:`PairLoss.pair` checks ranks and shapes with messages that name both keys.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import torch

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ShapeError
from crossdistill.losses.registry import LOSSES, Loss, Needs


def shape_str(x: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in x.shape) + ")"


class PairLoss(Loss):
    """A loss of ``(student[student_key], teacher[teacher_key])``.

    Subclasses set ``ranks`` (the tensor ranks they accept, batch dimension included) and
    ``same_shape`` (whether both tensors must have the same shape — true for losses that compare
    elements, false for those that compare batch-by-batch relations), and call
    ``super().__init__(student, teacher)`` with their own ``student``/``teacher`` keyword
    arguments so that the keys are validated hyper-parameters.
    """

    ranks: ClassVar[tuple[int, ...]] = (2, 3, 4)
    same_shape: ClassVar[bool] = False

    def __init__(self, student: str = "embedding", teacher: str = "embedding") -> None:
        super().__init__()
        self.student_key = student
        self.teacher_key = teacher

    @functools.cached_property
    def who(self) -> str:
        """The registered name, for messages (computed once)."""
        return next((n for n in LOSSES.names() if LOSSES.get(n) is type(self)), type(self).__name__)

    def needs(self) -> Needs:
        return Needs((self.student_key,), (self.teacher_key,), self.needs_target)

    def where(self, s: torch.Tensor, t: torch.Tensor) -> str:
        """Both keys and shapes, for error messages."""
        return (
            f"student {self.student_key!r} {shape_str(s)} and teacher {self.teacher_key!r} "
            f"{shape_str(t)}"
        )

    def pair(self, student: Knowledge, teacher: Knowledge) -> tuple[torch.Tensor, torch.Tensor]:
        """The two tensors, as float32 (float64 kept), with ranks and shapes checked."""
        s = _get(student, self.student_key, self.who)
        t = _get(teacher, self.teacher_key, self.who)
        where = self.where(s, t)
        for name, x in (("student", s), ("teacher", t)):
            if x.dim() not in self.ranks:
                raise ShapeError(
                    f"{self.who} needs tensors of rank {' or '.join(map(str, self.ranks))} "
                    f"(batch first); got {where}",
                    hint=f"tap another module for the {name}, or pool/reshape it with an adapter",
                )
        if s.shape[0] != t.shape[0]:
            raise ShapeError(f"{self.who}: batch sizes differ: {where}")
        if self.same_shape and s.shape != t.shape:
            raise ShapeError(
                f"{self.who} compares tensors element by element, but their shapes differ: {where}",
                hint="add `adapter: auto` to this loss in the recipe to learn a map from the "
                "student's shape to the teacher's",
            )
        return s, t


def _get(knowledge: Knowledge, key: str, who: str) -> torch.Tensor:
    if isinstance(knowledge, Knowledge):
        knowledge.require((key,), who)
    return as_float(knowledge[key])


def as_float(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 for the loss arithmetic; float64 is kept (for float64 gradchecks)."""
    return x if x.dtype == torch.float64 else x.float()
