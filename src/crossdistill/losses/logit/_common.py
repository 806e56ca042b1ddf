"""Shared base and checks for the logit losses: logits read by Knowledge key, class targets.

Every logit loss reads the student's and the teacher's logits by key, ``logits`` unless its
``student``/``teacher`` hyper-parameters name another output. A teacher of another label space
(a 1000-class teacher on a 10-class data set) is distilled into a second student head::

    losses:
      - {name: ce}                                              # the data head `logits`
      - {name: kd, params: {student: teacher_logits}}           # the head of the teacher's classes
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch

from crossdistill.core.knowledge import LOGITS, Knowledge
from crossdistill.errors import ConfigError, ShapeError
from crossdistill.losses.checks import HyperParameterError
from crossdistill.losses.pair import shape_str
from crossdistill.losses.registry import Loss, Needs


def tensor_of(knowledge: Knowledge, key: str, who: str) -> torch.Tensor:
    """``knowledge[key]`` as float32 (float64 kept), whatever autocast says; a KnowledgeError
    naming ``who`` and the key if it is missing."""
    if isinstance(knowledge, Knowledge):
        knowledge.require((key,), who)
    z = knowledge[key]
    return z if z.dtype == torch.float64 else z.float()


def logits_of(
    knowledge: Knowledge, who: str, key: str = LOGITS, side: str = "model"
) -> torch.Tensor:
    """The ``(B, C)`` logits ``knowledge[key]`` of the ``side`` ("student", "teacher") as float32
    (or float64), whatever autocast says."""
    z = tensor_of(knowledge, key, who)
    if z.dim() != 2:
        raise ShapeError(
            f"{who} expects logits of shape (batch, classes) in the {side}'s {key!r}, "
            f"got {shape_str(z)}",
            hint=f"name the {side}'s class scores with the loss's `{side}:` param",
        )
    return z


def logit_pair(
    student: Knowledge,
    teacher: Knowledge,
    who: str,
    student_key: str = LOGITS,
    teacher_key: str = LOGITS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits, checked to have the same ``(B, C)`` shape."""
    s = logits_of(student, who, student_key, "student")
    t = logits_of(teacher, who, teacher_key, "teacher")
    if s.shape != t.shape:
        raise ShapeError(
            f"{who} compares student {student_key!r} {shape_str(s)} with teacher {teacher_key!r} "
            f"{shape_str(t)}; they must have the same shape",
            hint="student and teacher must predict over the same classes; for a teacher of "
            "another label space give the student a second head of the teacher's classes and "
            "name it with this loss's `student:` param (e.g. student: teacher_logits)",
        )
    return s, t


def class_indices(target: torch.Tensor | None, logits: torch.Tensor, who: str) -> torch.Tensor:
    """Ground-truth class indices ``(B,)``; ``(B, C)`` soft / one-hot labels give their argmax."""
    if target is None:
        raise ValueError(f"{who} needs the ground-truth target, but none was given")
    if target.dim() == 2 and target.shape == logits.shape:
        target = target.argmax(dim=1)
    if target.shape != logits.shape[:1] or target.is_floating_point():
        raise ShapeError(
            f"{who} expects integer class indices of shape ({logits.shape[0]},) or labels of "
            f"shape {tuple(logits.shape)}, got {target.dtype} {tuple(target.shape)}"
        )
    return target.long()


class LogitLoss(Loss):
    """A loss of the student's logits ``student[student_key]`` and (unless ``teacher_key`` is
    ``None``) the teacher's ``teacher[teacher_key]``.

    Like :class:`~crossdistill.losses.pair.PairLoss`, subclasses take ``student``/``teacher``
    keyword arguments of their own (so that the keys are validated hyper-parameters) and pass
    them to ``super().__init__``; :meth:`needs` declares the configured keys, so a missing head
    fails before training with its name. ``who`` is the registered name, for messages.
    """

    who: ClassVar[str] = "loss"

    def __init__(self, student: str = LOGITS, teacher: str | None = LOGITS) -> None:
        super().__init__()
        self.student_key = student
        self.teacher_key = teacher

    def needs(self) -> Needs:
        teacher = () if self.teacher_key is None else (self.teacher_key,)
        return Needs((self.student_key,), teacher, self.needs_target)

    def student_logits(self, student: Knowledge) -> torch.Tensor:
        """The student's ``(B, C)`` logits."""
        return logits_of(student, self.who, self.student_key, "student")

    def pair(self, student: Knowledge, teacher: Knowledge) -> tuple[torch.Tensor, torch.Tensor]:
        """Student and teacher logits of the same ``(B, C)`` shape."""
        assert self.teacher_key is not None, f"{type(self).__name__} reads no teacher"
        return logit_pair(student, teacher, self.who, self.student_key, self.teacher_key)


# a loss's ``class_weights``: one weight per class, or how to derive them from class counts
ClassWeights = list[float] | Literal["balanced", "effective"] | None


def balanced_weights(counts: torch.Tensor) -> torch.Tensor:
    """scikit-learn's ``"balanced"`` weights ``n / (K · n_c)`` (inverse class frequency) of the
    ``(K,)`` class counts, float64; a class without examples gets 0 (not ``inf``)."""
    n_c = counts.to(torch.float64)
    present = n_c > 0
    return torch.where(present, n_c.sum() / (len(n_c) * n_c.clamp_min(1)), 0.0)


def effective_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Class-balanced weights by effective number of samples (Cui et al., CVPR 2019,
    arXiv:1901.05555, Eq. 3 and §3.2): ``(1 - β) / (1 - β^n_c)``, normalised to sum to ``K``,
    float64. A class without examples gets 0 (its effective number is 0), before normalising."""
    n_c = counts.to(torch.float64)
    present = n_c > 0
    raw = torch.where(present, (1 - beta) / (1 - beta ** n_c.clamp_min(1)), 0.0)
    return raw * len(n_c) / raw.sum()


def weighted_mean(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_i w_i·rows_i / Σ_i w_i`` of ``(B,)`` per-example losses; 0 (with a zero gradient)
    when every weight is 0."""
    total = weights.sum()
    # a clamped sum would give the gradient 0 / 0; dividing by 1 instead gives 0
    return (weights * rows).sum() / torch.where(total > 0, total, torch.ones_like(total))


class ClassWeighted(LogitLoss):
    """A logit loss whose examples count by their class: ``class_weights`` is ``None`` (every
    example alike), a list of one non-negative weight per class, ``"balanced"`` (inverse class
    frequency in the training data, :func:`balanced_weights`) or ``"effective"``
    (:func:`effective_weights` with ``effective_beta``).

    The last two need the class counts of the training data, given by :meth:`set_class_counts`
    (``Distiller.set_class_counts``; a run gives them from its training split). The weights are a
    buffer kept out of checkpoints: a resumed run counts its training data again and gets the
    same weights.
    """

    def init_class_weights(self, class_weights: ClassWeights, effective_beta: float) -> None:
        """Validate and keep ``class_weights`` (call from ``__init__``)."""
        who = self.who
        if not 0 <= effective_beta < 1:
            raise HyperParameterError(
                f"loss {who!r}: effective_beta must be in [0, 1), got {effective_beta!r}",
                hint="values near 1 (0.99, 0.999, 0.9999) weigh rare classes up the most",
            )
        weights = None
        if isinstance(class_weights, list):
            if not class_weights or not all(math.isfinite(w) and w >= 0 for w in class_weights):
                raise HyperParameterError(
                    f"loss {who!r}: class_weights must be finite numbers >= 0, one per class, "
                    f"got {class_weights!r}",
                    hint="give one weight per class, or class_weights: balanced",
                )
            if not any(class_weights):
                raise HyperParameterError(
                    f"loss {who!r}: class_weights are all 0: no example would count",
                    hint="give at least one class a weight > 0",
                )
            weights = torch.tensor(class_weights, dtype=torch.float32)
        self.class_weights = class_weights
        self._effective_beta = float(effective_beta)  # not schedulable: read once, by counts
        self.register_buffer("class_weight", weights, persistent=False)

    @property
    def needs_class_counts(self) -> bool:
        """Whether the weights come from the training data's class counts."""
        return isinstance(self.class_weights, str)

    def set_class_counts(self, counts: torch.Tensor) -> None:
        """Derive the weights from the ``(K,)`` training examples per class (a list of weights
        is only checked against ``K``; without class weights nothing happens)."""
        if self.class_weights is None:
            return
        k = len(counts)
        if isinstance(self.class_weights, list):
            if len(self.class_weights) != k:
                raise ConfigError(
                    f"loss {self.who!r}: class_weights has {len(self.class_weights)} weights, "
                    f"and the training data has {k} classes",
                    hint="give one weight per class, in the order of the class indices",
                )
            return
        if int(counts.sum()) == 0:
            raise ConfigError(
                f"loss {self.who!r}: class_weights: {self.class_weights} got class counts "
                "that are all 0",
                hint="count the classes of the training split",
            )
        if self.class_weights == "balanced":
            weights = balanced_weights(counts)
        else:
            weights = effective_weights(counts, self._effective_beta)
        self.class_weight = weights.to(torch.float32)

    def example_weights(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Each example's weight ``(B,)``, that of its class ``y``; ``None`` without."""
        weights = self.class_weight_of(logits)
        return None if weights is None else weights[y]

    def class_weight_of(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The ``(C,)`` class weights on ``logits``' device and dtype; ``None`` without."""
        if self.class_weights is None:
            return None
        weights = self.class_weight
        if weights is None:
            raise ConfigError(
                f"loss {self.who!r}: class_weights: {self.class_weights} needs the class "
                "counts of the training data, and none were given",
                hint="`crossdistill run` and distill() count the training split's labels "
                "(which must be class indices held in memory); in your own loop call "
                "distiller.set_class_counts(torch.bincount(labels, minlength=classes)) before "
                "training, or give class_weights as a list",
            )
        if weights.numel() != logits.shape[1]:
            raise ShapeError(
                f"loss {self.who!r}: {weights.numel()} class weights for logits of "
                f"{logits.shape[1]} classes {tuple(logits.shape)}",
                hint="give one class weight per class of the logits the loss reads",
            )
        if weights.device != logits.device:  # counts given after the model moved: move once
            weights = self.class_weight = weights.to(logits.device)
        return weights.to(logits.dtype)
