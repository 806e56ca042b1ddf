"""Shared base and checks for the logit losses: logits read by Knowledge key, class targets.

Every logit loss reads the student's and the teacher's logits by key, ``logits`` unless its
``student``/``teacher`` hyper-parameters name another output. A teacher of another label space
(a 1000-class teacher on a 10-class data set) is distilled into a second student head::

    losses:
      - {name: ce}                                              # the data head `logits`
      - {name: kd, params: {student: teacher_logits}}           # the head of the teacher's classes
"""

from __future__ import annotations

from typing import ClassVar

import torch

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.errors import ShapeError
from crossdistill.losses.pair import shape_str
from crossdistill.losses.registry import Loss, Needs


def tensor_of(knowledge: Knowledge, key: str, who: str) -> torch.Tensor:
    """``knowledge[key]`` as float32 (float64 kept), whatever autocast says; a KnowledgeError
    naming ``who`` and the key if it is missing."""
    if isinstance(knowledge, Knowledge):
        knowledge.require((key,), who)
    z = knowledge[key]
    return z if z.dtype == torch.float64 else z.float()


def logits_of(
    knowledge: Knowledge, who: str, key: str = LOGITS, side: str = "model"
) -> torch.Tensor:
    """The ``(B, C)`` logits ``knowledge[key]`` of the ``side`` ("student", "teacher") as float32
    (or float64), whatever autocast says."""
    z = tensor_of(knowledge, key, who)
    if z.dim() != 2:
        raise ShapeError(
            f"{who} expects logits of shape (batch, classes) in the {side}'s {key!r}, "
            f"got {shape_str(z)}",
            hint=f"name the {side}'s class scores with the loss's `{side}:` param",
        )
    return z


def logit_pair(
    student: Knowledge,
    teacher: Knowledge,
    who: str,
    student_key: str = LOGITS,
    teacher_key: str = LOGITS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits, checked to have the same ``(B, C)`` shape."""
    s = logits_of(student, who, student_key, "student")
    t = logits_of(teacher, who, teacher_key, "teacher")
    if s.shape != t.shape:
        raise ShapeError(
            f"{who} compares student {student_key!r} {shape_str(s)} with teacher {teacher_key!r} "
            f"{shape_str(t)}; they must have the same shape",
            hint="student and teacher must predict over the same classes; for a teacher of "
            "another label space give the student a second head of the teacher's classes and "
            "name it with this loss's `student:` param (e.g. student: teacher_logits)",
        )
    return s, t


def class_indices(target: torch.Tensor | None, logits: torch.Tensor, who: str) -> torch.Tensor:
    """Ground-truth class indices ``(B,)``; ``(B, C)`` soft / one-hot labels give their argmax."""
    if target is None:
        raise ValueError(f"{who} needs the ground-truth target, but none was given")
    if target.dim() == 2 and target.shape == logits.shape:
        target = target.argmax(dim=1)
    if target.shape != logits.shape[:1] or target.is_floating_point():
        raise ShapeError(
            f"{who} expects integer class indices of shape ({logits.shape[0]},) or labels of "
            f"shape {tuple(logits.shape)}, got {target.dtype} {tuple(target.shape)}"
        )
    return target.long()


class LogitLoss(Loss):
    """A loss of the student's logits ``student[student_key]`` and (unless ``teacher_key`` is
    ``None``) the teacher's ``teacher[teacher_key]``.

    Like :class:`~crossdistill.losses.pair.PairLoss`, subclasses take ``student``/``teacher``
    keyword arguments of their own (so that the keys are validated hyper-parameters) and pass
    them to ``super().__init__``; :meth:`needs` declares the configured keys, so a missing head
    fails before training with its name. ``who`` is the registered name, for messages.
    """

    who: ClassVar[str] = "loss"

    def __init__(self, student: str = LOGITS, teacher: str | None = LOGITS) -> None:
        super().__init__()
        self.student_key = student
        self.teacher_key = teacher

    def needs(self) -> Needs:
        teacher = () if self.teacher_key is None else (self.teacher_key,)
        return Needs((self.student_key,), teacher, self.needs_target)

    def student_logits(self, student: Knowledge) -> torch.Tensor:
        """The student's ``(B, C)`` logits."""
        return logits_of(student, self.who, self.student_key, "student")

    def pair(self, student: Knowledge, teacher: Knowledge) -> tuple[torch.Tensor, torch.Tensor]:
        """Student and teacher logits of the same ``(B, C)`` shape."""
        assert self.teacher_key is not None, f"{type(self).__name__} reads no teacher"
        return logit_pair(student, teacher, self.who, self.student_key, self.teacher_key)
