"""Hinton knowledge distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.losses.checks import check_range
from crossdistill.losses.logit._common import LogitLoss
from crossdistill.losses.registry import LOSSES


def soft_kl(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · mean_i KL(softmax(t_i/T) || softmax(s_i/T))`` for ``(B, C)`` logits."""
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    # kl_div(input=log q, target=log p) = Σ p (log p − log q), summed, / B by "batchmean"
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return temperature**2 * kl


@LOSSES.register("kd")
class KDLoss(LogitLoss):
    r"""Knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv:1503.02531).

    ``L = T² · (1/B) Σ_i KL(softmax(t_i / T) || softmax(s_i / T))`` ("batchmean").

    The ``T²`` keeps the gradient magnitude roughly independent of ``T`` (paper, §2). Equals
    ``T² ×`` torchdistill's ``KDLoss(alpha=None)``, which returns the KL without ``T²``; the
    hard-label term of torchdistill's ``alpha`` is the separate ``ce`` loss here.

    ``student``/``teacher`` name the Knowledge keys of the two logits (default ``logits``), e.g.
    a second student head for a teacher of another label space.
    """

    who = "kd"

    def __init__(
        self, temperature: float = 4.0, *, student: str = LOGITS, teacher: str = LOGITS
    ) -> None:
        super().__init__(student, teacher)
        self.temperature = check_range("kd", "temperature", temperature, positive=True)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        return soft_kl(s, t, self.temperature)
