"""Hinton knowledge distillation."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.losses.checks import check_range
from crossdistill.losses.logit._common import (
    ClassWeighted,
    ClassWeights,
    class_indices,
    weighted_mean,
)
from crossdistill.losses.registry import LOSSES, Needs


def soft_kl(
    s: torch.Tensor,
    t: torch.Tensor,
    temperature: float | torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T² · mean_i KL(softmax(t_i/T) || softmax(s_i/T))`` for ``(B, C)`` logits; with
    ``weight`` ``(B,)`` the weighted mean ``Σ_i w_i KL_i / Σ_i w_i`` (0 when every ``w_i`` is 0).
    """
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    if weight is None:
        # kl_div(input=log q, target=log p) = Σ p (log p − log q), summed, / B by "batchmean"
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    else:
        rows = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)
        kl = weighted_mean(rows, weight)
    return temperature**2 * kl


@LOSSES.register("kd")
class KDLoss(ClassWeighted):
    r"""Knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv:1503.02531).

    ``L = T² · (1/B) Σ_i KL(softmax(t_i / T) || softmax(s_i / T))`` ("batchmean").

    The ``T²`` keeps the gradient magnitude roughly independent of ``T`` (paper, §2). Equals
    ``T² ×`` torchdistill's ``KDLoss(alpha=None)``, which returns the KL without ``T²``; the
    hard-label term of torchdistill's ``alpha`` is the separate ``ce`` loss here.

    ``student``/``teacher`` name the Knowledge keys of the two logits (default ``logits``), e.g.
    a second student head for a teacher of another label space.

    ``class_weights`` (see :class:`~crossdistill.losses.logit._common.ClassWeighted`: a list,
    ``balanced`` or ``effective`` with ``effective_beta``) weighs each example's KL term by the
    weight of its ground-truth class and normalises the batch by the sum of those weights:
    ``L = T² · Σ_i w_{y_i} KL_i / Σ_i w_{y_i}`` (as ``F.cross_entropy(weight=...)`` does). The
    loss then needs the target (class indices, or ``(B, C)`` labels reduced to their argmax),
    and the logits must be over the data's classes.
    """

    who = "kd"
    search_space: ClassVar[dict[str, dict]] = {
        "temperature": {"low": 1.0, "high": 8.0, "log": True}
    }

    def __init__(
        self,
        temperature: float = 4.0,
        class_weights: ClassWeights = None,
        effective_beta: float = 0.999,
        *,
        student: str = LOGITS,
        teacher: str = LOGITS,
    ) -> None:
        super().__init__(student, teacher)
        self.temperature = check_range("kd", "temperature", temperature, positive=True)
        self.init_class_weights(class_weights, effective_beta)

    def needs(self) -> Needs:
        # the class of each example picks its weight
        return replace(super().needs(), target=self.class_weights is not None)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        if self.class_weights is None:
            return soft_kl(s, t, self.temperature)
        weights = self.example_weights(s, class_indices(target, s, "kd"))
        return soft_kl(s, t, self.temperature, weights)
