"""Correlation congruence."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import Knowledge
from crossdistill.losses.checks import HyperParameterError, check_range
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES


def rbf_taylor(x: torch.Tensor, gamma: float, order: int, normalize: bool) -> torch.Tensor:
    """``exp(-2γ) Σ_{p=0..P} (2γ)^p / p! · (x_iᵀx_j)^p`` for ``x`` flattened to ``(B, -1)``."""
    x = x.flatten(1)
    if normalize:
        x = F.normalize(x, dim=1)
    dot = x @ x.T
    kernel = torch.ones_like(dot)
    term = torch.ones_like(dot)
    for p in range(1, order + 1):
        # (2γ·dot)^p / p! as a running product: no factorial, no large intermediate power.
        term = term * (2 * gamma / p) * dot
        kernel = kernel + term
    return math.exp(-2 * gamma) * kernel


@LOSSES.register("cc")
class CCLoss(PairLoss):
    r"""Correlation congruence (Peng et al., ICCV 2019, arXiv:1904.01802).

    The correlation of two samples is the Gaussian RBF kernel
    ``k(F_i, F_j) = exp(−γ ‖F_i − F_j‖²)``; for unit-norm features it equals
    ``exp(−2γ) · exp(2γ F_iᵀF_j)``, which the paper expands to order ``P``:

    ``k(F_i, F_j) ≈ Σ_{p=0}^{P} exp(−2γ) (2γ)^p / p! · (F_iᵀF_j)^p``

    and ``L = (1 / B²) ‖ψ(F^t) − ψ(F^s)‖_F²`` with ``ψ(F)_{ij} = k(F_i, F_j)``.

    ``normalize: true`` (default) L2-normalizes each sample first, as the expansion assumes.
    torchdistill's ``CCKDLoss(kernel="gaussian", reduction="batchmean")`` computes the same
    kernel without normalizing (its ``Linear4CCKD`` wrapper only applies a linear layer) and
    returns the *unsquared* Frobenius norm over ``B²``: on unit-norm inputs (or with
    ``normalize: false``) ``L = B² · L_torchdistill²``. The defaults ``γ = 0.4``, ``P = 2``
    are those of torchdistill's example configuration. Widths may differ; the loss is
    invariant to rotations of either side and, when normalizing, to rescaling each sample.
    """

    def __init__(
        self,
        student: str = "embedding",
        teacher: str = "embedding",
        gamma: float = 0.4,
        order: int = 2,
        normalize: bool = True,
    ) -> None:
        super().__init__(student, teacher)
        self.gamma = check_range("cc", "gamma", gamma, positive=True)
        if order < 1:
            raise HyperParameterError(
                f"loss 'cc': order must be an integer >= 1, got {order!r}",
                hint="set order (the Taylor expansion's P) to 1 or more (default 2)",
            )
        self.order = order
        self.normalize = normalize

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        k_s = rbf_taylor(s, self.gamma, self.order, self.normalize)
        k_t = rbf_taylor(t, self.gamma, self.order, self.normalize)
        return (k_t - k_s).pow(2).sum() / s.shape[0] ** 2
