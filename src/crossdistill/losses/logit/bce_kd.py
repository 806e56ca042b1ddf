"""Knowledge distillation of a sigmoid (multi-label) teacher: binary cross-entropy per class."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.errors import ShapeError
from crossdistill.losses.checks import check_range
from crossdistill.losses.logit._common import LogitLoss, tensor_of
from crossdistill.losses.pair import shape_str
from crossdistill.losses.registry import LOSSES, Needs


def soft_bce(
    s: torch.Tensor,
    p: torch.Tensor,
    temperature: float,
    pos_weight: float = 1.0,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """``τ² · Σ_e m_e ℓ_e / Σ_e m_e`` with ``ℓ_e = -[w p_e log σ(s_e/τ) + (1-p_e) log(1-σ(s_e/τ))]``
    for student logits ``s`` and teacher probabilities ``p`` (already at temperature ``τ``);
    ``keep`` (bool, broadcastable to ``s``) is ``m``, all ones when ``None``."""
    if keep is not None:
        # masked elements (padding) may hold anything, NaN included: replaced before the loss,
        # since a NaN there would reach the student's gradient even with a zero weight
        keep = keep.expand(s.shape)
        s, p = torch.where(keep, s, 0.0), torch.where(keep, p, 0.0)
    # from logits: log σ(x) = -softplus(-x), exact for large |x| where log(sigmoid(x)) is not
    weight = None if pos_weight == 1.0 else s.new_tensor(pos_weight)
    reduction = "mean" if keep is None else "none"
    loss = F.binary_cross_entropy_with_logits(
        s / temperature, p, pos_weight=weight, reduction=reduction
    )
    if keep is not None:  # an all-masked batch gives 0 rather than 0 / 0
        loss = torch.where(keep, loss, 0.0).sum() / keep.sum().clamp_min(1)
    return temperature**2 * loss


def outside_unit_interval(x: torch.Tensor) -> str | None:
    """None when every value of ``x`` lies in ``[0, 1]``, else what it holds instead (for an
    error message); one host sync."""
    if x.numel() == 0:
        return None
    with torch.no_grad():
        low, high = torch.stack(torch.aminmax(x)).tolist()
    if low >= 0 and high <= 1:
        return None
    if math.isnan(low) or math.isnan(high):
        return "NaN, not probabilities in [0, 1]"
    return f"values in [{low:.4g}, {high:.4g}], outside [0, 1]"


@LOSSES.register("bce_kd")
class BCEKDLoss(LogitLoss):
    r"""KD for sigmoid / multi-label teachers: Hinton et al. 2015 (arXiv:1503.02531) with each
    class an independent sigmoid instead of one softmax.

    With student logits ``s`` and teacher logits ``t`` of the same shape ``(B, K)``, or
    ``(B, N, K)`` for frame-level outputs (a time axis, e.g. sound event detection), temperature
    ``τ``, ``q_e = σ(s_e / τ)``, ``p_e = σ(t_e / τ)`` and ``w = pos_weight``, per element ``e``::

        ℓ_e = -[w · p_e · log q_e + (1 - p_e) · log(1 - q_e)]
        L   = τ² · Σ_e m_e ℓ_e / Σ_e m_e

    the mean over the unmasked elements (``m_e ∈ {0, 1}``; all ones without a mask). As in
    Hinton KD, ``τ²`` keeps the gradients' scale independent of ``τ``: ``∂L/∂s_e`` is
    ``τ (q_e - p_e)`` per element before the mean, which tends to ``(s_e - t_e) / 4`` for large
    ``τ``. At ``w = 1`` the minimum is ``s = t`` (zero gradient); its value is ``τ²`` × the mean
    binary entropy of ``p``, not 0 (this is a cross-entropy, not a KL). ``w > 1`` up-weights the
    teacher's positives (as ``pos_weight`` of ``BCEWithLogitsLoss``), which moves the minimum to
    ``q = w p / (w p + 1 - p)``. Computed with ``binary_cross_entropy_with_logits`` and soft
    targets, stable for logits of any size.

    - ``student`` / ``teacher``: the Knowledge keys of the two logits (default ``logits``).
    - ``teacher_probabilities``: the teacher's key holds probabilities in ``[0, 1]`` (a model
      that ends in a sigmoid); they are used as ``p`` at ``τ = 1`` and as
      ``σ(logit(p) / τ)`` otherwise, the same as from logits. Values outside ``[0, 1]`` are a
      ShapeError naming the key; they are checked on the first call in eval mode (the
      Distiller's preflight check) and the first in training mode, one host sync each.
    - ``mask``: a teacher Knowledge key whose tensor selects the elements that count (true or
      nonzero), of the logits' shape or with 1 on the axes it does not vary along, at the same
      rank: ``(B, N, 1)`` for padded frames, ``(B, 1, K)`` for classes left out of a clip.
      Masked elements contribute nothing, whatever they hold (NaN included); a batch with every
      element masked gives 0.

    In a knowledge store, keep the teacher's key dense: top-k compression assumes a softmax.
    """

    who = "bce_kd"

    def __init__(
        self,
        temperature: float = 1.0,
        pos_weight: float = 1.0,
        *,
        student: str = LOGITS,
        teacher: str = LOGITS,
        mask: str | None = None,
        teacher_probabilities: bool = False,
    ) -> None:
        super().__init__(student, teacher)
        self.temperature = check_range("bce_kd", "temperature", temperature, positive=True)
        self.pos_weight = check_range("bce_kd", "pos_weight", pos_weight, positive=True)
        self.mask_key = mask
        self.teacher_probabilities = teacher_probabilities
        self._checked: set[bool] = set()  # the modes (training or not) whose inputs were checked

    def needs(self) -> Needs:
        mask = () if self.mask_key is None else (self.mask_key,)
        return Needs((self.student_key,), (self.teacher_key, *mask), False)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s = tensor_of(student, self.student_key, "bce_kd")
        t = tensor_of(teacher, self.teacher_key, "bce_kd")
        where = f"student {self.student_key!r} {shape_str(s)}, teacher {self.teacher_key!r} "
        where += shape_str(t)
        if s.dim() not in (2, 3):
            raise ShapeError(
                f"bce_kd needs logits of shape (batch, classes) or (batch, frames, classes); "
                f"got {where}",
                hint="name the student's multi-label scores with the loss's `student:` param",
            )
        if s.shape != t.shape:
            raise ShapeError(
                f"bce_kd compares element by element, but the shapes differ: {where}",
                hint="student and teacher must score the same classes (and frames); for a "
                "teacher of another label space give the student a head of the teacher's classes "
                "and name it with `student:`",
            )
        # one dtype: binary_cross_entropy_with_logits would compute in the target's
        dtype = torch.promote_types(s.dtype, t.dtype)
        s, t = s.to(dtype), t.to(dtype)
        keep = None if self.mask_key is None else self._keep(teacher, s)
        if self.teacher_probabilities:
            if self.training not in self._checked:
                self._check_probabilities(t, keep)
                self._checked.add(self.training)
            p = t if self.temperature == 1 else torch.sigmoid(torch.logit(t) / self.temperature)
        else:
            p = torch.sigmoid(t / self.temperature)
        return soft_bce(s, p, self.temperature, self.pos_weight, keep)

    def _keep(self, teacher: Knowledge, s: torch.Tensor) -> torch.Tensor:
        """The mask as booleans, checked to broadcast to the logits at the same rank."""
        assert self.mask_key is not None
        if isinstance(teacher, Knowledge):
            teacher.require((self.mask_key,), "bce_kd")
        m = teacher[self.mask_key]
        # the same rank, not numpy's broadcasting: a (B, N) mask of (B, N, K) logits would be
        # matched against (N, K), and silently so where N == K
        same_rank = m.dim() == s.dim()
        if not same_rank or any(a not in (b, 1) for a, b in zip(m.shape, s.shape, strict=True)):
            raise ShapeError(
                f"bce_kd: the mask {self.mask_key!r} {shape_str(m)} does not fit the logits "
                f"{shape_str(s)}",
                hint="give the mask the logits' shape, or 1 along the axes it does not vary on, "
                "e.g. (batch, frames, 1) for padded frames",
            )
        return m if m.dtype == torch.bool else m != 0

    def _check_probabilities(self, t: torch.Tensor, keep: torch.Tensor | None) -> None:
        """A ShapeError naming the teacher key unless its (kept) values lie in ``[0, 1]``."""
        if keep is not None:
            t = torch.where(keep, t, 0.5)  # masked elements may hold anything (padding)
        found = outside_unit_interval(t)
        if found is None:
            return
        raise ShapeError(
            f"bce_kd: teacher_probabilities is set, but the teacher's {self.teacher_key!r} "
            f"{shape_str(t)} holds {found}",
            hint="set teacher_probabilities: false if the key holds logits (scores before the "
            "sigmoid), or name the teacher's probability output with `teacher:`",
        )
