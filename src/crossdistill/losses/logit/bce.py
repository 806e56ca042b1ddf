"""Binary cross-entropy with the ground-truth targets: multi-label and frame-level labels."""

from __future__ import annotations

import torch

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.errors import ShapeError
from crossdistill.losses.checks import check_range
from crossdistill.losses.logit._common import LogitLoss, tensor_of
from crossdistill.losses.logit.bce_kd import outside_unit_interval, soft_bce
from crossdistill.losses.pair import shape_str
from crossdistill.losses.registry import LOSSES


def dense_target(target: torch.Tensor | None, logits: torch.Tensor, who: str) -> torch.Tensor:
    """``target`` as a float tensor of the logits' shape: the same shape, or the logits' shape
    without its trailing 1 (``(B, N)`` frame labels of ``(B, N, 1)`` logits, ``(B,)`` binary
    labels of ``(B, 1)`` logits)."""
    if target is None:
        raise ValueError(f"{who} needs the ground-truth target, but none was given")
    if target.shape != logits.shape and logits.shape[-1] == 1 and target.shape == logits.shape[:-1]:
        target = target.unsqueeze(-1)
    if target.shape != logits.shape:
        raise ShapeError(
            f"{who} compares the logits {shape_str(logits)} with the targets element by element, "
            f"but the targets are {shape_str(target)}",
            hint="give the data targets of the logits' shape (one 0/1 label per class, or per "
            "frame and class); for class indices use `ce`",
        )
    return target.to(logits.dtype)


@LOSSES.register("bce")
class BCELoss(LogitLoss):
    r"""Supervised binary cross-entropy: each element of the student's logits an independent
    sigmoid, scored against a 0/1 (or soft) label of the data.

    For multi-label data (targets ``(B, K)``, one column per label) and frame-level data
    (targets ``(B, N)`` or ``(B, N, K)``: a label per frame, e.g. voice activity). With logits
    ``s``, targets ``y ∈ [0, 1]`` and ``w = pos_weight``, the mean over elements ``e`` of::

        ℓ_e = -[w · y_e · log σ(s_e) + (1 - y_e) · log(1 - σ(s_e))]

    (``BCEWithLogitsLoss``; Bishop, *Pattern Recognition and Machine Learning*, §4.3.2, for one
    sigmoid per label). The targets have the logits' shape, or lack only a trailing 1 (``(B, N)``
    labels of ``(B, N, 1)`` logits). Targets outside ``[0, 1]`` are a ShapeError, checked on the
    first call in each mode (one host sync each). ``bce_kd`` is the same loss against a
    teacher's probabilities; the two are combined by weight like ``ce`` and ``kd``.

    - ``pos_weight``: > 1 up-weights the positives (rare events), as in ``BCEWithLogitsLoss``.
    - ``student``: the Knowledge key of the logits (default ``logits``).
    """

    who = "bce"
    needs_target = True

    def __init__(self, pos_weight: float = 1.0, *, student: str = LOGITS) -> None:
        super().__init__(student, None)
        self.pos_weight = check_range("bce", "pos_weight", pos_weight, positive=True)
        self._checked: set[bool] = set()  # the modes (training or not) whose targets were checked

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None
    ) -> torch.Tensor:
        s = tensor_of(student, self.student_key, "bce")
        y = dense_target(target, s, "bce")
        if self.training not in self._checked:
            found = outside_unit_interval(y)
            if found is not None:
                raise ShapeError(
                    f"bce: the targets {shape_str(y)} hold {found}",
                    hint="bce reads 0/1 labels (or probabilities); for class indices use `ce`",
                )
            self._checked.add(self.training)
        return soft_bce(s, y, 1.0, self.pos_weight)
