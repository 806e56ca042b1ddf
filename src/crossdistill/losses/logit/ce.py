"""Cross-entropy with the ground-truth target."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.losses.checks import HyperParameterError, check_range
from crossdistill.losses.logit._common import LogitLoss, class_indices
from crossdistill.losses.registry import LOSSES


@LOSSES.register("ce")
class CrossEntropyLoss(LogitLoss):
    r"""Supervised cross-entropy of the student: ``mean_i -sum_c q_ic log softmax(s_i)_c``.

    ``q_i`` is the one-hot target smoothed as in Szegedy et al. 2016 (arXiv:1512.00567):
    ``q = (1 - ε)·onehot(y) + ε / C`` with ``ε = label_smoothing``. The target may be class indices
    ``(B,)`` or class probabilities ``(B, C)`` (e.g. after mixup). The teacher is not used.
    ``student`` names the Knowledge key of the logits (default ``logits``, the data's head).
    """

    who = "ce"
    needs_target = True

    def __init__(self, label_smoothing: float = 0.0, *, student: str = LOGITS) -> None:
        super().__init__(student, None)
        self.label_smoothing = check_range("ce", "label_smoothing", label_smoothing)
        if self.label_smoothing > 1:
            raise HyperParameterError(
                f"loss 'ce': label_smoothing must be in [0, 1], got {label_smoothing!r}"
            )

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None
    ) -> torch.Tensor:
        s = self.student_logits(student)
        if target is not None and target.is_floating_point() and target.shape == s.shape:
            target = target.to(s.dtype)  # class probabilities
        else:
            target = class_indices(target, s, "ce")
        return F.cross_entropy(s, target, label_smoothing=self.label_smoothing)
