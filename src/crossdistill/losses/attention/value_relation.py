"""MiniLM value-relation transfer (and MiniLMv2's multi-head self-attention relations)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ShapeError
from crossdistill.losses.attention.attention_kl import kl_log_rows
from crossdistill.losses.checks import HyperParameterError
from crossdistill.losses.pair import PairLoss
from crossdistill.losses.registry import LOSSES


def log_relation(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``log softmax(X_h X_hᵀ / √d_h)`` per relation head: ``(B, N, D) → (B, heads, N, N)``,
    ``X_h`` the ``h``-th contiguous slice of width ``d_h = D / heads`` (the usual head split)."""
    b, n, d = x.shape
    xh = x.reshape(b, n, heads, d // heads).transpose(1, 2)
    return F.log_softmax(xh @ xh.transpose(-2, -1) / math.sqrt(d // heads), dim=-1)


@LOSSES.register("value_relation")
class ValueRelationLoss(PairLoss):
    r"""MiniLM value-relation transfer (Wang et al. 2020, arXiv:2002.10957, Eq. 8-9).

    On values ``V`` of shape ``(B, N, D)`` (before the split into heads), split into
    ``relation_heads`` contiguous slices ``V_a`` of width ``d = D / relation_heads``:

    ``VR_a = softmax(V_a V_aᵀ / √d)``, ``(N, N)`` per head, softmax over the last dimension;
    ``L = 1/(B·R·N) Σ_b Σ_a Σ_i KL(VR^t_{b,a,i} ‖ VR^s_{b,a,i})``.

    Each side's ``√d`` is its own (``D_s / R`` and ``D_t / R``), so widths may differ: the
    relation is ``N × N`` whatever ``D``. In MiniLM the value relation is taken per *attention*
    head and both models must have the same number of heads: set ``relation_heads`` to that
    number. MiniLMv2 (Wang et al. 2021, arXiv:2012.15828, Eq. 4-6) splits both sides into the
    same number of *relation* heads whatever their attention-head counts (e.g. 48 for a
    BERT-base teacher): that is the same ``relation_heads`` — one parameter, because the two
    relations are compared head by head. The same loss on tapped queries or keys gives
    MiniLMv2's Q-Q and K-K relations.

    Sequence lengths must match; there is no padding mask (padded positions take part in the
    relation like any other, and ``N`` is the padded length). The loss is invariant to an
    orthogonal rotation within each relation head's slice of either side's values (it reads only
    ``V_a V_aᵀ``), not to rotations that mix heads.
    """

    ranks = (3,)

    def __init__(
        self,
        student: str = "features/student_values",
        teacher: str = "features/teacher_values",
        *,
        relation_heads: int,
    ) -> None:
        super().__init__(student, teacher)
        if relation_heads < 1:
            raise HyperParameterError(
                f"loss 'value_relation': relation_heads must be >= 1, got {relation_heads!r}",
                hint="use the attention-head count of both models (MiniLM), or any common "
                "divisor of both widths (MiniLMv2)",
            )
        self.relation_heads = int(relation_heads)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        where = self.where(s, t)
        if s.shape[1] != t.shape[1]:
            raise ShapeError(
                f"value_relation: sequence lengths differ: {where}",
                hint="both sides must see the same tokens (same tokenizer, patches and length)",
            )
        for side, x in (("student", s), ("teacher", t)):
            if x.shape[2] % self.relation_heads:
                raise ShapeError(
                    f"value_relation: the {side} width {x.shape[2]} does not split into "
                    f"relation_heads={self.relation_heads}: {where}",
                    hint="choose relation_heads dividing both widths",
                )
        heads = self.relation_heads
        return kl_log_rows(log_relation(t, heads), log_relation(s, heads))
