"""FitNets hint loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import Knowledge
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES


@LOSSES.register("fitnet")
class FitNetLoss(PairLoss):
    r"""FitNets hint loss (Romero et al., ICLR 2015, arXiv:1412.6550).

    ``L = (1 / n) Σ_e (r(s)_e − t_e)²``, the mean over all ``n`` elements of the two tensors (batch
    included), where ``r(s)`` is the student tensor already mapped to the teacher's shape by the
    loss's adapter (the Distiller applies it; this loss only compares same-shape tensors).

    The paper writes ``½ ‖t − r(s)‖²`` summed per sample; the mean is the convention of the
    reference implementations (RepDistiller's ``HintLoss`` and torchdistill, which builds FitNets
    from ``nn.MSELoss(reduction="mean")`` in a ``SimpleLossWrapper``), with which it is equal.
    Scale by the loss weight to recover the paper's ``½ · n / B``.
    """

    same_shape = True

    def __init__(self, student: str, teacher: str) -> None:
        super().__init__(student, teacher)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        return F.mse_loss(s, t)  # one fused kernel each way, vs three for (s - t)².mean()
