"""ND: regularizing the student embedding's norm and direction towards the teacher's class means."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedBuffer

from crossdistill.core.knowledge import Knowledge
from crossdistill.errors import ConfigError, ShapeError
from crossdistill.losses.checks import HyperParameterError
from crossdistill.losses.pair import PairLoss, shape_str
from crossdistill.losses.registry import LOSSES


def class_targets(
    target: torch.Tensor | None, batch: int, num_classes: int, who: str
) -> torch.Tensor:
    """Integer class indices ``(B,)`` in ``[0, num_classes)``, or a clear error."""
    if target is None:
        raise ConfigError(
            f"loss {who!r} needs the ground-truth class of each sample, but no target was given",
            hint="use a data source with class labels, or remove this loss",
        )
    if target.dim() == 2 and target.shape[1] == num_classes:  # one-hot / soft labels
        target = target.argmax(dim=1)
    if target.shape != (batch,) or target.is_floating_point():
        raise ShapeError(
            f"loss {who!r} expects integer class indices of shape ({batch},), got "
            f"{target.dtype} {shape_str(target)}"
        )
    if batch and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ShapeError(
            f"loss {who!r}: class indices must lie in [0, {num_classes}), got "
            f"{int(target.min())}..{int(target.max())}",
            hint="set num_classes to the number of classes in the data",
        )
    return target.long()


@LOSSES.register("nd")
class NDLoss(LazyModuleMixin, PairLoss):
    r"""ND loss (Wang et al., "Improving Knowledge Distillation via Regularizing Feature Norm and
    Direction", 2023, arXiv:2305.17007; official code: WangYZ1608/Knowledge-Distillation-via-ND).

    With the student embedding ``s_i`` (the penultimate features, mapped to the teacher's width
    by an adapter when they differ), the teacher's ``t_i`` and the teacher's class-mean embedding
    ``c_k`` of class ``k``::

        L = (1/B) Σ_i [ 1 - ⟨s_i, c_{y_i} / ‖c_{y_i}‖⟩ / max(‖s_i‖, ‖t_i‖) ]

    The projection ``⟨s_i, ĉ_y⟩`` grows both with the alignment of ``s_i`` to its class centre
    (direction) and with ``‖s_i‖`` (norm); dividing by ``max(‖s_i‖, ‖t_i‖)`` bounds the reward
    so the norm is pushed up to the teacher's, not without limit.

    **Class means (a difference from the paper).** The paper precomputes ``c_k`` over the
    training set with the frozen teacher before distilling. Here they are buffers updated in
    training mode from each batch's teacher embeddings, *before* the loss is computed (the
    teacher is frozen, so using the current batch is what the precomputed mean does too):
    with ``momentum`` null (default) the exact running mean of every teacher embedding seen,
    which after one epoch is the paper's training-set mean (of augmented views); with a
    ``momentum`` m, an EMA ``c ← m·c + (1-m)·batch mean`` (the first batch of a class sets it).
    Under DDP the per-class sums and counts are all-reduced, so every rank holds the same means.
    :meth:`set_class_means` loads precomputed means (and by default freezes them). A class not
    seen yet contributes nothing (samples are averaged over those with a mean; none → 0).

    ``num_classes`` is required; the embedding width is read from the first call (lazily, like
    ``nn.LazyLinear``). The means are checkpointed with the student.
    """

    ranks = (2,)
    same_shape = True
    needs_target = True

    def __init__(
        self,
        num_classes: int,
        student: str = "embedding",
        teacher: str = "embedding",
        momentum: float | None = None,
    ) -> None:
        super().__init__(student, teacher)
        if num_classes < 1:
            raise HyperParameterError(f"loss 'nd': num_classes must be >= 1, got {num_classes}")
        if momentum is not None and not 0 <= momentum < 1:
            raise HyperParameterError(
                f"loss 'nd': momentum must lie in [0, 1) or be null, got {momentum}",
                hint="null keeps the exact running mean of the teacher embeddings",
            )
        self.num_classes = num_classes
        self.momentum = momentum
        self.class_means: torch.Tensor = UninitializedBuffer()
        self.register_buffer("class_counts", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))

    def initialize_parameters(self, student, teacher, target=None) -> None:  # type: ignore[override]
        """Size the class means from the first call's teacher tensor (lazy-module hook)."""
        if self.has_uninitialized_params():
            _, t = self.pair(student, teacher)
            with torch.no_grad():
                self.class_means.materialize((self.num_classes, t.shape[1]), dtype=t.dtype)
                self.class_means.zero_()

    @torch.no_grad()
    def set_class_means(
        self, means: torch.Tensor, counts: torch.Tensor | None = None, freeze: bool = True
    ) -> None:
        """Use precomputed class means ``(num_classes, D)`` (the paper's setting); ``freeze``
        stops the running updates. Classes with a zero count (or an all-zero mean) are unseen."""
        if means.dim() != 2 or means.shape[0] != self.num_classes:
            raise ShapeError(
                f"loss 'nd': class means must have shape ({self.num_classes}, D), got "
                f"{shape_str(means)}"
            )
        if isinstance(self.class_means, UninitializedBuffer):
            self.class_means.materialize(tuple(means.shape), dtype=means.dtype)
        elif means.shape != self.class_means.shape:
            raise ShapeError(
                f"loss 'nd': class means {shape_str(means)} do not match the teacher embedding "
                f"width seen so far {shape_str(self.class_means)}"
            )
        self.class_means.copy_(means)
        if counts is None:
            counts = (means.abs().sum(dim=1) > 0).to(self.class_counts.dtype)
        self.class_counts.copy_(counts)
        self.frozen.fill_(freeze)

    @torch.no_grad()
    def _update(self, t: torch.Tensor, y: torch.Tensor) -> None:
        means = self.class_means
        sums = torch.zeros_like(means).index_add_(0, y, t.to(means.dtype))
        n = torch.bincount(y, minlength=self.num_classes).to(means.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(n)
        seen = n > 0
        if self.momentum is None:
            total = self.class_counts.to(means.dtype) + n
            means[seen] += (sums[seen] - n[seen, None] * means[seen]) / total[seen, None]
        else:
            batch_mean = sums[seen] / n[seen, None]
            first = (self.class_counts[seen] == 0)[:, None]
            m = self.momentum
            means[seen] = torch.where(first, batch_mean, m * means[seen] + (1 - m) * batch_mean)
        self.class_counts += n.to(self.class_counts.dtype)

    def forward(
        self, student: Knowledge, teacher: Knowledge, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        y = class_targets(target, s.shape[0], self.num_classes, "nd")
        if self.training and not bool(self.frozen):
            self._update(t.detach(), y)
        known = self.class_counts[y] > 0
        if not bool(known.all()):
            s, t, y = s[known], t[known], y[known]
            if s.shape[0] == 0:
                return (s * 0).sum()
        centre = self.class_means[y].to(s.dtype)
        direction = centre / centre.norm(dim=1, keepdim=True)
        scale = torch.maximum(s.norm(dim=1), t.norm(dim=1))
        return (1 - (s * direction).sum(dim=1) / scale).mean()
