"""DIST: relational distillation with Pearson correlation."""

from __future__ import annotations

from typing import ClassVar

import torch

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.losses.checks import check_range
from crossdistill.losses.logit._common import LogitLoss
from crossdistill.losses.registry import LOSSES


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@LOSSES.register("dist")
class DISTLoss(LogitLoss):
    r"""DIST (Huang et al., NeurIPS 2022, arXiv:2205.10536).

    With ``Y^s = softmax(s / τ)``, ``Y^t = softmax(t / τ)`` of shape ``(B, C)`` and Pearson
    correlation ``ρ(u, v) = <u - ū, v - v̄> / (‖u - ū‖ ‖v - v̄‖ + ε)``:

    - inter-class ``= 1 - (1/B) Σ_i ρ(Y^s_{i,:}, Y^t_{i,:})`` (each sample across classes)
    - intra-class ``= 1 - (1/C) Σ_j ρ(Y^s_{:,j}, Y^t_{:,j})`` (each class across the batch)
    - ``L = β · τ² · inter + γ · τ² · intra``

    ``ε`` is added to the norm product as in the authors' code; torchdistill's ``DISTLoss`` uses
    ``F.cosine_similarity`` (which clamps the norms by ``ε`` instead), a difference of order
    ``ε / (‖u‖‖v‖)``. With a batch of one the intra-class term is the constant ``γ · τ²``.

    ``student``/``teacher`` name the Knowledge keys of the two logits (default ``logits``), e.g.
    a second student head for a teacher of another label space.
    """

    # log ranges around the paper's settings (beta = gamma = 1 or 2, tau 1 to 4)
    search_space: ClassVar[dict[str, dict]] = {
        "beta": {"low": 0.5, "high": 4.0, "log": True},
        "gamma": {"low": 0.5, "high": 4.0, "log": True},
        "temperature": {"low": 1.0, "high": 8.0, "log": True},
    }

    who = "dist"

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        eps: float = 1e-8,
        *,
        student: str = LOGITS,
        teacher: str = LOGITS,
    ) -> None:
        super().__init__(student, teacher)
        self.beta = check_range("dist", "beta", beta)
        self.gamma = check_range("dist", "gamma", gamma)
        self.temperature = check_range("dist", "temperature", temperature, positive=True)
        self.eps = check_range("dist", "eps", eps, positive=True)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        y_s, y_t = (s / self.temperature).softmax(1), (t / self.temperature).softmax(1)
        inter = 1 - pearson_rows(y_s, y_t, self.eps).mean()
        intra = 1 - pearson_rows(y_s.T, y_t.T, self.eps).mean()
        return self.temperature**2 * (self.beta * inter + self.gamma * intra)
