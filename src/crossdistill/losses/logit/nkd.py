"""Normalized knowledge distillation."""

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


@LOSSES.register("nkd")
class NKDLoss(ClassWeighted):
    r"""Normalized KD (Yang et al., ICCV 2023, arXiv:2303.13005, Eq. 8; ref. code yzd-v/cls_KD).

    With ``y`` the true class, ``S = softmax(s)``, ``T = softmax(t)`` (no temperature), and
    ``Ŝ^λ, T̂^λ = softmax`` over the non-target logits ``s_{≠y} / λ``, ``t_{≠y} / λ`` (the
    non-target probabilities at temperature ``λ``, renormalised to sum to 1):

    ``L = (1/B) Σ_i [ -T_y · log S_y  -  γ · λ² · Σ_{k≠y} T̂^λ_k · log Ŝ^λ_k ]``

    The first term is the target loss, a cross-entropy weighted by the teacher's target
    probability; the second is a cross-entropy (not a KL: it includes the teacher's non-target
    entropy, a constant for the student) between the normalised non-target distributions.
    ``λ = temperature``. ``(B, C)`` soft labels are reduced to their argmax, as in the reference.

    ``student``/``teacher`` name the Knowledge keys of the two logits (default ``logits``); the
    hard labels index their classes, so both must be over the data's classes.

    ``class_weights`` (a list, ``balanced`` or ``effective``, as for ``kd``) makes the batch mean
    a weighted mean ``Σ_i w_{y_i}·L_i / Σ_i w_{y_i}`` by each example's class.
    """

    who = "nkd"
    needs_target = True
    # log ranges around the defaults (gamma 1.5, temperature 1)
    search_space: ClassVar[dict[str, dict]] = {
        "temperature": {"low": 1.0, "high": 8.0, "log": True},
        "gamma": {"low": 0.5, "high": 4.0, "log": True},
    }

    def __init__(
        self,
        temperature: float = 1.0,
        gamma: float = 1.5,
        class_weights: ClassWeights = None,
        effective_beta: float = 0.999,
        *,
        student: str = LOGITS,
        teacher: str = LOGITS,
    ) -> None:
        super().__init__(student, teacher)
        self.temperature = check_range("nkd", "temperature", temperature, positive=True)
        self.gamma = check_range("nkd", "gamma", gamma)
        self.init_class_weights(class_weights, effective_beta)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        if s.shape[1] < 2:
            raise ShapeError(f"nkd needs at least 2 classes, got logits {tuple(s.shape)}")
        y = class_indices(target, s, "nkd")[:, None]
        target_loss = -(t.softmax(1).gather(1, y) * s.log_softmax(1).gather(1, y)).squeeze(1)
        others = torch.ones_like(s, dtype=torch.bool).scatter_(1, y, False)
        s_nt = s[others].view(s.shape[0], -1) / self.temperature
        t_nt = t[others].view(t.shape[0], -1) / self.temperature
        non_target = -(F.softmax(t_nt, dim=1) * F.log_softmax(s_nt, dim=1)).sum(dim=1)
        rows = target_loss + self.gamma * self.temperature**2 * non_target
        weights = self.example_weights(s, y[:, 0])
        return rows.mean() if weights is None else weighted_mean(rows, weights)
