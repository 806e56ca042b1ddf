"""Cross-attention distillation into a dual encoder (fusion -> dual)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ConfigError, KnowledgeError, ShapeError
from crossdistill.losses.checks import check_range
from crossdistill.losses.pair import as_float
from crossdistill.losses.registry import LOSSES, Loss, Needs

DIRECTIONS = ("q2c", "c2q")
ROW_SUM_TOLERANCE = 1e-3


@LOSSES.register("dual_attention")
class DualAttentionLoss(Loss):
    r"""The dual encoder's token-to-token similarity distributions learn the cross-encoder's
    cross attention — the attention distillation of the Distilled Dual-Encoder (DiDE; Wang et
    al., EMNLP 2022, arXiv:2112.08723), where a fusion teacher's cross-modal attention teaches a
    dual-encoder student that has none.

    A dual encoder never lets a query token look at a candidate's tokens, but its token states
    define such a distribution: for query token ``i`` and the candidate's tokens ``j``,
    ``a_ij = softmax_j(⟨h_i, g_j⟩ / τ)`` over the candidate's valid tokens, with ``h``/``g`` the
    last-layer token states of query and candidate (``τ`` defaults to ``√D``, as scaled
    dot-product attention; DiDE forms it from the student's own attention projections, which
    a tower without cross attention does not have, so here the states themselves are compared).
    The teacher's ``A_ij`` is its last layer's head-averaged attention from query token ``i`` to
    the candidate's tokens, renormalised over them (``cross_encoder`` with ``attention: true``).
    For each direction (``q2c``; ``c2q``: from candidate tokens to query tokens)::

        L_dir = mean over valid rows (b, c, i) of KL(A_bci· ‖ a_bci·)

    and ``L`` is the mean of the chosen ``directions``. Both sides must tokenize alike (the same
    tokenizer, special tokens left out, no truncation on either side) so that position ``i`` is
    the same token; where the teacher's rows do not sum to 1 over the student's valid tokens,
    they do not line up and the loss says so.
    """

    def __init__(
        self,
        student_query: str = "query_tokens",
        student_query_mask: str = "query_mask",
        student_candidates: str = "candidate_tokens",
        student_candidate_mask: str = "candidate_mask",
        teacher_q2c: str = "q2c_attention",
        teacher_c2q: str = "c2q_attention",
        directions: Sequence[str] = DIRECTIONS,
        temperature: float | None = None,
    ) -> None:
        super().__init__()
        directions = [directions] if isinstance(directions, str) else list(directions)
        bad = [d for d in directions if d not in DIRECTIONS]
        if bad or not directions:
            raise ConfigError(
                f"loss 'dual_attention': directions must be some of {list(DIRECTIONS)}, "
                f"got {directions}"
            )
        self.directions = list(dict.fromkeys(directions))
        self.keys = {
            "query": student_query,
            "query_mask": student_query_mask,
            "candidates": student_candidates,
            "candidate_mask": student_candidate_mask,
        }
        self.teacher_keys = {"q2c": teacher_q2c, "c2q": teacher_c2q}
        self.temperature = (
            None
            if temperature is None
            else check_range("dual_attention", "temperature", temperature, positive=True)
        )

    def needs(self) -> Needs:
        return Needs(
            tuple(self.keys.values()), tuple(self.teacher_keys[d] for d in self.directions)
        )

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        h, g = student[self.keys["query"]], student[self.keys["candidates"]]
        with torch.autocast(h.device.type, enabled=False):
            h, g = as_float(h), as_float(g)
            qm = student[self.keys["query_mask"]].bool()
            cm = student[self.keys["candidate_mask"]].bool()
            self._check_shapes(h, g, qm, cm)
            b, c, _, d = g.shape
            tau = self.temperature or math.sqrt(d)
            h4 = h[:, None].expand(b, c, *h.shape[1:])
            qm3 = qm[:, None].expand(b, c, qm.shape[1])
            sides = {"q2c": (h4, qm3, g, cm), "c2q": (g, cm, h4, qm3)}
            terms = [
                self._direction(as_float(teacher[self.teacher_keys[name]]), *sides[name], tau, name)
                for name in self.directions
            ]
            return torch.stack(terms).mean()

    def _check_shapes(
        self, h: torch.Tensor, g: torch.Tensor, qm: torch.Tensor, cm: torch.Tensor
    ) -> None:
        ok = h.dim() == 3 and g.dim() == 4 and qm.shape == h.shape[:2] and cm.shape == g.shape[:3]
        if not ok or g.shape[0] != h.shape[0] or g.shape[3] != h.shape[2]:
            raise ShapeError(
                f"dual_attention needs query tokens (B, Lq, D) with mask (B, Lq) and candidate "
                f"tokens (B, C, Lc, D) with mask (B, C, Lc); got {tuple(h.shape)}, "
                f"{tuple(qm.shape)}, {tuple(g.shape)}, {tuple(cm.shape)}",
                hint="use a dual_encoder student with tokens: true",
            )

    def _direction(
        self,
        attention: torch.Tensor,
        rows: torch.Tensor,
        row_mask: torch.Tensor,
        cols: torch.Tensor,
        col_mask: torch.Tensor,
        tau: float,
        name: str,
    ) -> torch.Tensor:
        key = self.teacher_keys[name]
        want = (*rows.shape[:3], cols.shape[2])
        if tuple(attention.shape) != want:
            raise ShapeError(
                f"dual_attention: teacher {key!r} is {tuple(attention.shape)} but the student's "
                f"tokens make {want}: the two sides tokenized the texts differently",
                hint="give the student's tower the teacher's tokenizer (MiniLM's for both) and "
                "a max_length that truncates neither side",
            )
        attention = attention.detach() * col_mask[:, :, None, :]
        valid = row_mask & col_mask.any(-1, keepdim=True)
        sums = attention.sum(-1)[valid]
        if sums.numel() and (sums - 1).abs().max() > ROW_SUM_TOLERANCE:
            raise KnowledgeError(
                f"dual_attention: rows of teacher {key!r} do not sum to 1 over the student's "
                f"tokens (worst {float(sums.min()):.3f}..{float(sums.max()):.3f}): teacher and "
                "student tokens do not line up",
                hint="both sides must use one tokenizer, without special tokens, untruncated",
            )
        logits = rows @ cols.transpose(-1, -2) / tau
        logits = logits.masked_fill(~col_mask[:, :, None, :], torch.finfo(logits.dtype).min)
        log_student = F.log_softmax(logits, dim=-1)
        # p log p − p log q, with 0 log 0 = 0 (padded and masked columns)
        kl = torch.xlogy(attention, attention) - attention * log_student
        kl = kl.sum(-1)[valid]
        return kl.mean() if kl.numel() else (logits * 0).sum()
