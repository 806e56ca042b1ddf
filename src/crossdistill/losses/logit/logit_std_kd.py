"""KD on standardised (Z-score) logits."""

from __future__ import annotations

import torch

from crossdistill.core.knowledge import Knowledge
from crossdistill.losses.checks import check_range
from crossdistill.losses.logit._common import logit_pair
from crossdistill.losses.logit.kd import soft_kl
from crossdistill.losses.registry import LOSSES, Loss


def standardize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-row ``(z - mean) / (std + eps)``, std with Bessel's correction (``torch.std``)."""
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


@LOSSES.register("logit_std_kd")
class LogitStdKDLoss(Loss):
    r"""KD with logit standardisation (Sun et al., CVPR 2024, arXiv:2403.01427).

    ``Z(z) = (z - mean(z)) / (std(z) + ε)`` per sample, then Hinton KD at base temperature ``T``:

    ``L = T² · (1/B) Σ_i KL(softmax(Z(t_i) / T) || softmax(Z(s_i) / T))``

    As in the official code and torchdistill's ``LogitStdKDLoss``, ``std`` is ``torch.std``
    (Bessel-corrected, divides by ``C - 1``) and ``ε = 1e-7`` is added to it. The ``T²`` factor is
    the official code's; torchdistill applies it only together with its CE term (``alpha`` set),
    so this loss equals ``T² ×`` torchdistill's ``LogitStdKDLoss(alpha=None)``.
    """

    needs_student = ("logits",)
    needs_teacher = ("logits",)

    def __init__(self, temperature: float = 2.0, eps: float = 1e-7) -> None:
        super().__init__()
        self.temperature = check_range("logit_std_kd", "temperature", temperature, positive=True)
        self.eps = check_range("logit_std_kd", "eps", eps, positive=True)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = logit_pair(student, teacher, "logit_std_kd")
        return soft_kl(standardize(s, self.eps), standardize(t, self.eps), self.temperature)
