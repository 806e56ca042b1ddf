"""MiniLM self-attention distribution transfer."""

from __future__ import annotations

from typing import Literal

import torch

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ShapeError
from crossdistill.losses.checks import HyperParameterError
from crossdistill.losses.pair import PairLoss, shape_str
from crossdistill.losses.registry import LOSSES

# Rows of tapped probabilities must sum to 1 within this: loose enough for float16/bfloat16
# attention (rounding of ~N terms), tight enough to catch logits, values, a softmax over the wrong
# dimension, or attention dropout (a dropped row sums to ~1 ± 0.03 and has zeros where it
# should not).
SUM_TOLERANCE = 1e-2


def kl_rows(p_t: torch.Tensor, p_s: torch.Tensor) -> torch.Tensor:
    """``mean over rows of KL(p_t ‖ p_s) = Σ_k p_t log(p_t / p_s)`` for probabilities whose last
    dimension is the distribution.

    ``0 · log 0 = 0`` and ``0 · log(0 / 0) = 0``: where the teacher gives a key probability 0
    (a masked padding key) the term and its gradient are exactly 0 whatever the student says,
    even if the student's probability is 0 too. A key the teacher attends to but the student
    gives exactly 0 makes the KL infinite, as it mathematically is.
    """
    positive = p_t > 0
    one = torch.ones_like(p_t)
    # log of 1 where p_t = 0: the masked terms are 0 with a 0 gradient, never 0 · (−inf) = NaN,
    # and no 0/0 in the backward of log at p_s = 0.
    log_t = torch.where(positive, p_t, one).log()
    log_s = torch.where(positive, p_s, one).log()
    return (p_t * (log_t - log_s)).sum(dim=-1).mean()


def kl_log_rows(log_t: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
    """``mean over rows of KL(p_t ‖ p_s)`` from log-probabilities (e.g. ``log_softmax``)."""
    return (log_t.exp() * (log_t - log_s)).sum(dim=-1).mean()


def check_distribution(x: torch.Tensor, side: str, key: str, who: str) -> None:
    """A ShapeError naming ``key`` unless ``x`` is non-negative with last-dim rows summing to 1.

    One host sync; callers run it once per mode (see :class:`AttentionKLLoss`), not per step.
    """
    with torch.no_grad():
        low = x.min().item() if x.numel() else 0.0
        off = (x.sum(dim=-1) - 1).abs().max().item() if x.numel() else 0.0
    if low >= 0 and off <= SUM_TOLERANCE:
        return
    what = f"has a negative entry ({low:.3g})" if low < 0 else f"has rows summing to 1 ± {off:.3g}"
    raise ShapeError(
        f"{who} needs attention probabilities (non-negative, each row over the last dimension "
        f"summing to 1), but {side} {key!r} {shape_str(x)} {what}",
        hint="tap the softmax output (for a Hugging Face model, the self-attention module with "
        "eager attention and `select: 1`, see crossdistill.models.hf), not scores, values or a "
        "Linear; turn attention dropout off in the student (attention_probs_dropout_prob=0), "
        "since dropped probabilities are no distribution",
    )


@LOSSES.register("attention_kl")
class AttentionKLLoss(PairLoss):
    r"""MiniLM self-attention distribution transfer (Wang et al. 2020, arXiv:2002.10957, Eq. 7).

    On attention probabilities ``A`` of shape ``(B, H, N, N)`` (softmax over the last, key
    dimension), with ``A_{b,a,i}`` the distribution of query ``i`` of head ``a``:

    ``L = 1/(B·H·N) Σ_b Σ_a Σ_i KL(A^t_{b,a,i} ‖ A^s_{b,a,i})``

    — the paper's ``1/(A_h |x|) Σ_a Σ_t KL`` averaged over the batch too. The teacher's
    distribution comes first, as in the paper.

    Heads: MiniLM needs the same number of heads on both sides (``head_reduce: none``, the
    default; a mismatch is a ShapeError). ``head_reduce: mean`` averages the heads of each side
    first (the mean of distributions is a distribution), so that different head counts can be
    compared — not in the paper, a coarser signal. Sequence lengths must match.

    Exact zeros (masked padding keys) are handled: ``0 · log 0 = 0``, with finite gradients.
    No padding mask is read: padded *query* rows are averaged in like any other (in a BERT-style
    model they are still distributions over the real keys); ``N`` is the padded length, not the
    paper's ``|x|``.

    The inputs are checked to be distributions (ShapeError naming the key otherwise) on the first
    call in eval mode (the Distiller's preflight check) and on the first call in training mode
    (which catches attention dropout in the student): one host sync each, nothing afterwards.

    The gradient with respect to the student's probabilities at ``A^s = A^t`` is the constant
    ``−1/(B·H·N)`` along each row, orthogonal to the simplex: through the softmax that produced
    them (the attention logits) it is 0.
    """

    ranks = (4,)

    def __init__(
        self,
        student: str = "attention/student",
        teacher: str = "attention/teacher",
        head_reduce: Literal["none", "mean"] = "none",
    ) -> None:
        super().__init__(student, teacher)
        if head_reduce not in ("none", "mean"):
            raise HyperParameterError(
                f"loss 'attention_kl': head_reduce must be 'none' or 'mean', got {head_reduce!r}"
            )
        self.head_reduce = head_reduce
        self._checked: set[bool] = set()

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        where = self.where(s, t)
        if s.shape[-1] != s.shape[-2] or t.shape[-1] != t.shape[-2]:
            raise ShapeError(
                f"attention_kl needs self-attention probabilities (B, heads, N, N); got {where}"
            )
        if s.shape[-1] != t.shape[-1]:
            raise ShapeError(
                f"attention_kl: sequence lengths differ: {where}",
                hint="both sides must see the same tokens (same tokenizer, patches and length)",
            )
        if s.shape[1] != t.shape[1] and self.head_reduce == "none":
            raise ShapeError(
                f"attention_kl compares head by head, but the head counts differ: {where}",
                hint="tap layers with the same number of heads, or set head_reduce: mean",
            )
        if self.training not in self._checked:
            check_distribution(s, "student", self.student_key, "attention_kl")
            check_distribution(t, "teacher", self.teacher_key, "attention_kl")
            self._checked.add(self.training)
        if self.head_reduce == "mean":
            s, t = s.mean(dim=1), t.mean(dim=1)
        return kl_rows(t, s)
