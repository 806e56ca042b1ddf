"""OFA-KD: a projector branch maps an intermediate student feature to logits, distilled with the
OFA loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.errors import ConfigError, ShapeError
from crossdistill.losses.checks import HyperParameterError, check_range
from crossdistill.losses.logit._common import class_indices, logits_of
from crossdistill.losses.pair import shape_str
from crossdistill.losses.registry import LOSSES, Loss, Needs


def ofa_criterion(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    eps: float,
    temperature: float,
) -> torch.Tensor:
    """``mean_i [ -(1 + p^t_y)^ε log p^s_y - Σ_{c≠y} p^t_c log p^s_c ]`` at temperature τ."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    one_hot = F.one_hot(target, p_t.shape[1]).to(p_t.dtype)
    # weight (1 + p^t_y)^ε on the target class, p^t_c elsewhere
    weight = p_t * (1 - one_hot) + one_hot * (1 + p_t) ** eps
    return -(weight * log_p_s).sum(dim=1).mean()


class Projector(nn.Module):
    """Feature → ``width`` vector: tokens (a map's positions, a ViT's tokens, or a vector as one
    token) through a shared Linear (a 1×1 conv on maps) and GELU, averaged, then LayerNorm."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.LazyLinear(width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (B, C, H, W) → (B, HW, C)
            x = x.flatten(2).transpose(1, 2)
        elif x.dim() == 2:
            x = x[:, None, :]
        x = x.to(self.linear.weight.dtype)
        h = F.gelu(self.linear(x)).mean(dim=1)
        return self.norm(h)


@LOSSES.register("ofa")
class OFALoss(LazyModuleMixin, Loss):
    r"""One-for-All KD (Hao et al., NeurIPS 2023, arXiv:2310.19444).

    A branch — the projector below and a linear classifier — maps the intermediate student
    feature ``student`` (a map ``(B, C, H, W)``, tokens ``(B, N, D)`` or a vector ``(B, D)``) to
    logits ``z^s``, distilled from the teacher's logits ``z^t`` (``teacher`` key) with the OFA
    loss (paper Eq. 5), ``p = softmax(z / τ)``::

        L = (1/B) Σ_i [ -(1 + p^t_{i,y})^ε log p^s_{i,y} - Σ_{c≠y} p^t_{i,c} log p^s_{i,c} ]

    ``ε ≥ 1`` enhances the target class when the teacher is confident (the paper uses ε = 1 on
    CIFAR-100 and up to 1.5 on ImageNet; τ = 1). At ε = 1 this is the hard-label cross-entropy
    plus the cross-entropy with the teacher's soft labels; at ε = 0 it is the soft-label
    cross-entropy plus ``(1 - p^t_y)`` × the hard-label one. No ``τ²`` factor, as in the paper.

    The authors' code weights the classes as ``(p^t + 1_y)^ε - 1_y`` instead: target
    ``(1 + p^t_y)^ε - 1`` and others ``(p^t_c)^ε`` (it leaves the hard-label term to the
    separate student CE); at ε = 1 that is the soft-label cross-entropy only. This loss follows
    the paper's formula.

    **The projector** is simpler than OFA's (which replicates the student's remaining stages):
    a shared Linear to ``width`` on every position / token (a 1×1 conv on maps), GELU, mean over
    positions, LayerNorm, and a Linear to the number of classes, read from the teacher's logits
    at the first call. It is part of this loss module, so it is trained and checkpointed with
    the student (the Distiller's ``trainable()`` includes the losses) but never exported: the
    exported student is the student alone. Computed in the dtype of the projector
    (``.double()`` the loss for float64).
    """

    def __init__(
        self,
        student: str,
        teacher: str = LOGITS,
        eps: float = 1.0,
        temperature: float = 1.0,
        width: int = 256,
    ) -> None:
        super().__init__()
        if width < 1:
            raise HyperParameterError(f"loss 'ofa': width must be >= 1, got {width}")
        if student == LOGITS:
            raise ConfigError(
                "loss 'ofa': `student` names the intermediate feature the branch starts from, "
                "not the student's logits",
                hint="e.g. student: features/layer2 (tap it in the student's `taps`)",
            )
        self.student_key = student
        self.teacher_key = teacher
        self.eps = check_range("ofa", "eps", eps)
        self.temperature = check_range("ofa", "temperature", temperature, positive=True)
        self.projector = Projector(width)
        self.head_weight = UninitializedParameter()
        self.head_bias = UninitializedParameter()

    needs_target = True

    def needs(self) -> Needs:
        return Needs((self.student_key,), (self.teacher_key,), True)

    def _feature(self, student: Knowledge) -> torch.Tensor:
        if isinstance(student, Knowledge):
            student.require((self.student_key,), "ofa")
        x = student[self.student_key]
        if x.dim() not in (2, 3, 4):
            raise ShapeError(
                f"ofa: the student feature {self.student_key!r} must be a vector (B, D), tokens "
                f"(B, N, D) or a map (B, C, H, W); got {shape_str(x)}",
                hint="tap another module for the student",
            )
        return x if x.dtype == torch.float64 else x.float()

    def _teacher(self, teacher: Knowledge) -> torch.Tensor:
        return logits_of(teacher, "ofa", self.teacher_key, "teacher")

    def initialize_parameters(self, student, teacher, target=None) -> None:  # type: ignore[override]
        """Size the classifier from the teacher's logits (lazy-module hook); init as nn.Linear."""
        if not self.has_uninitialized_params():
            return
        classes, width = self._teacher(teacher).shape[1], self.projector.norm.normalized_shape[0]
        dtype = self.projector.norm.weight.dtype
        with torch.no_grad():
            self.head_weight.materialize((classes, width), dtype=dtype)
            self.head_bias.materialize((classes,), dtype=dtype)
            nn.init.kaiming_uniform_(self.head_weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(width)
            nn.init.uniform_(self.head_bias, -bound, bound)

    def branch_logits(self, student: Knowledge) -> torch.Tensor:
        """The branch's logits ``(B, classes)`` for the student feature."""
        return F.linear(self.projector(self._feature(student)), self.head_weight, self.head_bias)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self._feature(student)
        z_t = self._teacher(teacher)
        if x.shape[0] != z_t.shape[0]:
            raise ShapeError(
                f"ofa: batch sizes differ: student {self.student_key!r} {shape_str(x)} and "
                f"teacher {self.teacher_key!r} {shape_str(z_t)}"
            )
        if target is None:
            raise ConfigError(
                "loss 'ofa' needs the ground-truth class of each sample, but no target was given",
                hint="use a data source with class labels, or remove this loss",
            )
        y = class_indices(target, z_t, "ofa")
        z_s = F.linear(self.projector(x), self.head_weight, self.head_bias)
        dtype = self.head_weight.dtype  # the criterion in full precision, whatever autocast says
        with torch.autocast(z_s.device.type, enabled=False):
            return ofa_criterion(z_s.to(dtype), z_t.to(dtype), y, self.eps, self.temperature)
