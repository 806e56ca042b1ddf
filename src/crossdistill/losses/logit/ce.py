"""Cross-entropy with the ground-truth target."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.losses.checks import HyperParameterError, check_range
from crossdistill.losses.logit._common import ClassWeighted, ClassWeights, class_indices
from crossdistill.losses.registry import LOSSES


@LOSSES.register("ce")
class CrossEntropyLoss(ClassWeighted):
    r"""Supervised cross-entropy of the student: ``mean_i -sum_c q_ic log softmax(s_i)_c``.

    ``q_i`` is the one-hot target smoothed as in Szegedy et al. 2016 (arXiv:1512.00567):
    ``q = (1 - ε)·onehot(y) + ε / C`` with ``ε = label_smoothing``. The target may be class indices
    ``(B,)`` or class probabilities ``(B, C)`` (e.g. after mixup). The teacher is not used.
    ``student`` names the Knowledge key of the logits (default ``logits``, the data's head).

    ``class_weights`` (see :class:`~crossdistill.losses.logit._common.ClassWeighted`: a list,
    ``balanced`` or ``effective`` with ``effective_beta``) is passed to torch's
    ``F.cross_entropy(weight=w)``, with its semantics: for class indices the weighted mean
    ``Σ_i w_{y_i}·ℓ_i / Σ_i w_{y_i}``, and with label smoothing the smoothing term
    ``-(ε/C)·Σ_c w_c log softmax(s_i)_c`` weights each class by its own weight (not the
    example's) and is divided by the same ``Σ_i w_{y_i}``; for class probabilities
    ``(1/B)·Σ_i -Σ_c w_c q_ic log softmax(s_i)_c`` (divided by ``B``, not by the weights). A
    batch whose examples all have weight 0 gives NaN, as in torch.
    """

    who = "ce"
    needs_target = True
    search_space: ClassVar[dict[str, dict]] = {"label_smoothing": {"low": 0.0, "high": 0.2}}

    def __init__(
        self,
        label_smoothing: float = 0.0,
        class_weights: ClassWeights = None,
        effective_beta: float = 0.999,
        *,
        student: str = LOGITS,
    ) -> None:
        super().__init__(student, None)
        self.init_class_weights(class_weights, effective_beta)
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
        weight = self.class_weight_of(s)
        return F.cross_entropy(s, target, weight=weight, label_smoothing=self.label_smoothing)
