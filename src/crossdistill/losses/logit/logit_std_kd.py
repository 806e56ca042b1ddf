"""KD on standardised (Z-score) logits."""

from __future__ import annotations

from typing import ClassVar

import torch

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.losses.checks import check_range
from crossdistill.losses.logit._common import LogitLoss
from crossdistill.losses.logit.kd import soft_kl
from crossdistill.losses.registry import LOSSES


def standardize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-row ``(z - mean) / (std + eps)``, std with Bessel's correction (``torch.std``)."""
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


@LOSSES.register("logit_std_kd")
class LogitStdKDLoss(LogitLoss):
    r"""KD with logit standardisation (Sun et al., CVPR 2024, arXiv:2403.01427).

    ``Z(z) = (z - mean(z)) / (std(z) + ε)`` per sample, then Hinton KD at base temperature ``T``:

    ``L = T² · (1/B) Σ_i KL(softmax(Z(t_i) / T) || softmax(Z(s_i) / T))``

    As in the official code and torchdistill's ``LogitStdKDLoss``, ``std`` is ``torch.std``
    (Bessel-corrected, divides by ``C - 1``) and ``ε = 1e-7`` is added to it. The ``T²`` factor is
    the official code's; torchdistill applies it only together with its CE term (``alpha`` set),
    so this loss equals ``T² ×`` torchdistill's ``LogitStdKDLoss(alpha=None)``.

    ``student``/``teacher`` name the Knowledge keys of the two logits (default ``logits``), e.g.
    a second student head for a teacher of another label space.
    """

    search_space: ClassVar[dict[str, dict]] = {
        "temperature": {"low": 1.0, "high": 8.0, "log": True}
    }

    who = "logit_std_kd"

    def __init__(
        self,
        temperature: float = 2.0,
        eps: float = 1e-7,
        *,
        student: str = LOGITS,
        teacher: str = LOGITS,
    ) -> None:
        super().__init__(student, teacher)
        self.temperature = check_range("logit_std_kd", "temperature", temperature, positive=True)
        self.eps = check_range("logit_std_kd", "eps", eps, positive=True)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        return soft_kl(standardize(s, self.eps), standardize(t, self.eps), self.temperature)
