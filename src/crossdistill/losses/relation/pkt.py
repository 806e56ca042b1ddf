"""Probabilistic knowledge transfer."""

from __future__ import annotations

import torch

from crossdistill.core.knowledge import Knowledge
from crossdistill.losses.checks import check_range
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES


def conditional_probabilities(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``P[i, j] = K(x_i, x_j) / Σ_k K(x_i, x_k)`` with the cosine kernel ``K = (cos + 1) / 2``."""
    x = x.flatten(1)
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    kernel = (x @ x.T + 1) / 2
    return kernel / kernel.sum(dim=1, keepdim=True)


@LOSSES.register("pkt")
class PKTLoss(PairLoss):
    r"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018, arXiv:1803.10837).

    With the cosine-similarity kernel ``K(a, b) = ½ (aᵀb / (‖a‖‖b‖) + 1)`` the
    conditional probabilities are ``p_{j|i} = K(x_i, x_j) / Σ_k K(x_i, x_k)`` on each side and

    ``L = (1 / B²) Σ_i Σ_j p^t_{j|i} · log((p^t_{j|i} + ε) / (p^s_{j|i} + ε))``

    This is the authors' code (``probabilistic_kt/nn/pkt.py``), which torchdistill's ``PKTLoss``
    also follows, and equals it (same ``ε = 1e-7``, also added to the norms as
    ``x / (‖x‖ + ε)``). The paper's formulas differ in two ways the code does not follow: they
    leave ``k = j`` (self-similarity, always 1) out of the normalizing sum and they sum the KL
    terms over pairs instead of averaging. The ``ε`` in the log makes the gradient at
    ``student = teacher`` of order ``ε`` rather than exactly 0. Widths may differ; the loss is
    invariant to rotations of either side and (up to ``ε``) to rescaling each sample.
    """

    def __init__(
        self, student: str = "embedding", teacher: str = "embedding", eps: float = 1e-7
    ) -> None:
        super().__init__(student, teacher)
        self.eps = check_range("pkt", "eps", eps, positive=True)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        p_s = conditional_probabilities(s, self.eps)
        p_t = conditional_probabilities(t, self.eps)
        return (p_t * ((p_t + self.eps).log() - (p_s + self.eps).log())).mean()
