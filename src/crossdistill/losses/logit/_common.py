"""Shared checks for the logit losses: logits and class targets."""

from __future__ import annotations

import torch

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.errors import ShapeError


def logits_of(knowledge: Knowledge, who: str) -> torch.Tensor:
    """The ``(B, C)`` logits of ``knowledge`` as float32 (or float64), whatever autocast says."""
    if isinstance(knowledge, Knowledge):
        knowledge.require((LOGITS,), who)
    z = knowledge[LOGITS]
    if z.dim() != 2:
        raise ShapeError(f"{who} expects logits of shape (batch, classes), got {tuple(z.shape)}")
    return z if z.dtype == torch.float64 else z.float()


def logit_pair(student: Knowledge, teacher: Knowledge, who: str) -> tuple[torch.Tensor, ...]:
    """Student and teacher logits, checked to have the same ``(B, C)`` shape."""
    s, t = logits_of(student, who), logits_of(teacher, who)
    if s.shape != t.shape:
        raise ShapeError(
            f"{who} compares student logits {tuple(s.shape)} with teacher logits "
            f"{tuple(t.shape)}; they must have the same shape",
            hint="student and teacher must predict over the same classes",
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
