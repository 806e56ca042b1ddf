"""Decoupled knowledge distillation."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.errors import ShapeError
from crossdistill.losses.checks import check_range
from crossdistill.losses.logit._common import (
    ClassWeighted,
    ClassWeights,
    class_indices,
    weighted_mean,
)
from crossdistill.losses.registry import LOSSES


def _split(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log b`` over (target, non-target) ``(B, 2)``, and the non-target logits ``(B, C-1)``."""
    others = torch.ones_like(z, dtype=torch.bool).scatter_(1, y[:, None], False)
    z_nt = z[others].view(z.shape[0], -1)
    lse = torch.logsumexp(z, dim=1, keepdim=True)
    log_b = torch.cat([z.gather(1, y[:, None]), torch.logsumexp(z_nt, 1, keepdim=True)], 1) - lse
    return log_b, z_nt


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row ``KL(p || q)`` from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


@LOSSES.register("dkd")
class DKDLoss(ClassWeighted):
    r"""Decoupled KD (Zhao et al., CVPR 2022, arXiv:2203.08679).

    With ``p = softmax(z / T)`` for the true class ``y``, ``b = [p_y, 1 - p_y]`` and
    ``p̂ = softmax`` over the non-target logits ``z_{≠y} / T`` (the non-target probabilities
    renormalised):

    - ``TCKD = KL(b^t || b^s)``, ``NCKD = KL(p̂^t || p̂^s)``
    - ``L = T² · (1/B) Σ_i (α · TCKD_i + β · NCKD_i)``

    Classic KD decomposes as ``KL(p^t || p^s) = TCKD + (1 - p^t_y) · NCKD`` (paper, Eq. 6); DKD
    drops the ``(1 - p^t_y)`` weight. ``log(1 - p_y)`` is computed as a log-sum-exp over the
    non-target logits, so no probability is ever subtracted from 1. The reference code's linear
    warm-up of the loss weight over the first epochs is a schedule, not part of this loss.

    ``student``/``teacher`` name the Knowledge keys of the two logits (default ``logits``); the
    hard labels index their classes, so both must be over the data's classes.

    ``class_weights`` (a list, ``balanced`` or ``effective``, as for ``kd``) makes the batch mean
    a weighted mean ``Σ_i w_{y_i}·L_i / Σ_i w_{y_i}`` by each example's class.
    """

    who = "dkd"
    needs_target = True
    # the paper sets beta 8 on CIFAR-100 and 0.5 on ImageNet, alpha 1, temperature 4 or 1
    search_space: ClassVar[dict[str, dict]] = {
        "alpha": {"low": 0.5, "high": 2.0, "log": True},
        "beta": {"low": 0.5, "high": 10.0, "log": True},
        "temperature": {"low": 1.0, "high": 8.0, "log": True},
    }

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        class_weights: ClassWeights = None,
        effective_beta: float = 0.999,
        *,
        student: str = LOGITS,
        teacher: str = LOGITS,
    ) -> None:
        super().__init__(student, teacher)
        self.alpha = check_range("dkd", "alpha", alpha)
        self.beta = check_range("dkd", "beta", beta)
        self.temperature = check_range("dkd", "temperature", temperature, positive=True)
        self.init_class_weights(class_weights, effective_beta)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        if s.shape[1] < 2:
            raise ShapeError(f"dkd needs at least 2 classes, got logits {tuple(s.shape)}")
        y = class_indices(target, s, "dkd")
        log_b_s, s_nt = _split(s / self.temperature, y)
        log_b_t, t_nt = _split(t / self.temperature, y)
        tckd = _kl(log_b_t, log_b_s)
        nckd = _kl(F.log_softmax(t_nt, dim=1), F.log_softmax(s_nt, dim=1))
        rows = self.alpha * tckd + self.beta * nckd
        weights = self.example_weights(s, y)
        mean = rows.mean() if weights is None else weighted_mean(rows, weights)
        return self.temperature**2 * mean
