"""Classification metrics for distillation: accuracy, teacher agreement, KL and calibration.

Every function takes logits ``(N, C)`` (any float dtype) and integer targets ``(N,)``, computes
in float64 on the CPU and returns a Python float. :class:`MetricAccumulator` collects batches
for the trainer's validation loop and computes everything once at the end.
:func:`binary_metrics` scores independent yes/no decisions (multi-label, frame-level).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from crossdistill.errors import ConfigError, ShapeError


def _logits(logits: Tensor, name: str = "logits") -> Tensor:
    if logits.ndim != 2:
        raise ShapeError(
            f"{name} must be 2-D (N, C), got shape {tuple(logits.shape)}",
            hint="flatten extra dimensions or select the classification head's output",
        )
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ShapeError(f"{name} is empty: shape {tuple(logits.shape)}")
    return logits.detach().to(device="cpu", dtype=torch.float64)


def _target(target: Tensor, logits: Tensor) -> Tensor:
    if target.shape != logits.shape[:1]:
        raise ShapeError(
            f"target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)}; expected ({logits.shape[0]},)",
            hint="targets are class indices, one per example",
        )
    return target.detach().to(device="cpu", dtype=torch.long)


def _pair(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    s, t = _logits(student_logits, "student logits"), _logits(teacher_logits, "teacher logits")
    if s.shape != t.shape:
        raise ShapeError(
            f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ in shape",
            hint="student and teacher must score the same examples over the same classes",
        )
    return s, t


def accuracy(logits: Tensor, target: Tensor) -> float:
    """Top-1 accuracy: ``mean_i [argmax_c logits[i, c] == target[i]]``."""
    z = _logits(logits)
    y = _target(target, z)
    return (z.argmax(dim=1) == y).double().mean().item()


def topk_accuracy(logits: Tensor, target: Tensor, k: int) -> float:
    """Top-k accuracy: fraction of examples whose target is among the k highest logits.

    ``k`` is clipped to the number of classes ``C`` (so ``k >= C`` gives 1.0).
    """
    if k < 1:
        raise ConfigError(f"top-k accuracy needs k >= 1, got k={k}")
    z = _logits(logits)
    y = _target(target, z)
    top = z.topk(min(k, z.shape[1]), dim=1).indices
    return (top == y[:, None]).any(dim=1).double().mean().item()


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Top-1 agreement: ``mean_i [argmax s_i == argmax t_i]``."""
    s, t = _pair(student_logits, teacher_logits)
    return (s.argmax(dim=1) == t.argmax(dim=1)).double().mean().item()


def topk_overlap(student_logits: Tensor, teacher_logits: Tensor, k: int) -> float:
    """Mean over examples of ``|top_k(s_i) ∩ top_k(t_i)| / k``: how much of the teacher's
    ranking of its first ``k`` classes the student keeps (1.0: the same ``k`` classes)."""
    s, t = _pair(student_logits, teacher_logits)
    k = min(k, s.shape[1])
    top_s, top_t = s.topk(k, dim=1).indices, t.topk(k, dim=1).indices
    shared = (top_s[:, :, None] == top_t[:, None, :]).any(dim=2).sum(dim=1)
    return (shared.double() / k).mean().item()


def per_class(
    logits: Tensor, target: Tensor, names: Sequence[str] | None = None
) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every class (by name when ``names`` are given).
    A class never predicted has precision 0; one absent from the targets has recall 0 and
    support 0 (the usual convention: no division by zero, no silent NaN)."""
    z = _logits(logits)
    y = _target(target, z)
    classes = z.shape[1]
    predicted = z.argmax(dim=1)
    confusion = torch.zeros(classes, classes, dtype=torch.float64)
    confusion.index_put_((y, predicted), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    hits = confusion.diagonal()
    support, guessed = confusion.sum(dim=1), confusion.sum(dim=0)
    precision = torch.where(guessed > 0, hits / guessed.clamp(min=1), torch.zeros_like(hits))
    recall = torch.where(support > 0, hits / support.clamp(min=1), torch.zeros_like(hits))
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp(min=1e-300), both)
    labels = list(names) if names is not None and len(names) == classes else None
    return {
        (labels[c] if labels else str(c)): {
            "precision": precision[c].item(),
            "recall": recall[c].item(),
            "f1": f1[c].item(),
            "support": int(support[c].item()),
        }
        for c in range(classes)
    }


def _scores(predicted: Tensor, real: Tensor) -> dict[str, float]:
    """Precision, recall, F1 and support of one yes/no decision (boolean vectors), with the
    conventions of :func:`per_class`."""
    hits = (predicted & real).sum().item()
    guessed, support = predicted.sum().item(), real.sum().item()
    precision = hits / guessed if guessed else 0.0
    recall = hits / support if support else 0.0
    both = precision + recall
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / both if both else 0.0,
        "support": int(support),
    }


def binary_metrics(
    predicted: Tensor, real: Tensor, names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Metrics of independent yes/no decisions, ``(N, K)`` booleans: K labels per example
    (multi-label), or one (``K = 1``: a binary task, e.g. speech in each frame).

    ``accuracy`` is over every decision, ``f1`` that of the positives over every decision
    (micro). ``per_class`` and ``macro_f1`` (the mean of its F1s) are over the classes of the
    task: the K labels, or for ``K = 1`` its two classes, ``negative`` and ``positive``."""
    if predicted.shape != real.shape or predicted.dim() != 2:
        raise ShapeError(
            f"binary decisions {tuple(predicted.shape)} and labels {tuple(real.shape)} must "
            "have one (N, K) shape"
        )
    if real.shape[1] == 1:
        columns = {
            "negative": (~predicted[:, 0], ~real[:, 0]),
            "positive": (predicted[:, 0], real[:, 0]),
        }
    else:
        labels = list(names) if names is not None and len(names) == real.shape[1] else None
        columns = {
            (labels[k] if labels else str(k)): (predicted[:, k], real[:, k])
            for k in range(real.shape[1])
        }
    table = {name: _scores(p, r) for name, (p, r) in columns.items()}
    return {
        "accuracy": (predicted == real).double().mean().item(),
        "f1": _scores(predicted.flatten(), real.flatten())["f1"],
        "macro_f1": sum(c["f1"] for c in table.values()) / len(table),
        "per_class": table,
    }


def macro_f1(logits: Tensor, target: Tensor) -> float:
    """The unweighted mean of the per-class F1 over the classes present in the targets (a
    rare class counts as much as a common one)."""
    rows = per_class(logits, target).values()
    present = [row["f1"] for row in rows if row["support"] > 0]
    return sum(present) / len(present) if present else 0.0


def kl_divergence(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> float:
    """Mean over examples of ``KL(p_t || p_s)`` in nats.

    ``p_t = softmax(t / T)``, ``p_s = softmax(s / T)``,
    ``KL = sum_c p_t[c] * (log p_t[c] - log p_s[c])``. No ``T**2`` factor (this is a metric,
    not the Hinton et al. 2015 training loss).
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    s, t = _pair(student_logits, teacher_logits)
    log_ps = torch.log_softmax(s / temperature, dim=1)
    log_pt = torch.log_softmax(t / temperature, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean().item()


def negative_log_likelihood(logits: Tensor, target: Tensor) -> float:
    """Mean ``-log softmax(z_i)[y_i]`` (the cross-entropy, natural log): a proper scoring rule
    that still ranks models when accuracy saturates (a small validation split all right)."""
    return float(F.cross_entropy(logits.double(), target.long()))


def expected_calibration_error(logits: Tensor, target: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks").

    Confidence ``conf_i = max_c softmax(z_i)[c]`` goes into equal-width bins
    ``B_m = ((m-1)/M, m/M]``, ``m = 1..M``; then
    ``ECE = sum_m |B_m|/N * |acc(B_m) - conf(B_m)|``.
    """
    if n_bins < 1:
        raise ConfigError(f"ECE needs n_bins >= 1, got {n_bins}")
    z = _logits(logits)
    y = _target(target, z)
    conf = torch.softmax(z, dim=1).amax(dim=1)
    correct = (z.argmax(dim=1) == y).double()  # same prediction rule as accuracy()
    # bucketize(right=False) gives i with edges[i-1] < conf <= edges[i]: the bin ((i-1)/M, i/M].
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    bins = (torch.bucketize(conf, edges) - 1).clamp_(0, n_bins - 1)
    gap = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, correct - conf)
    # |B_m|/N * |acc(B_m) - conf(B_m)| = |sum_{i in B_m} (correct_i - conf_i)| / N
    return (gap.abs().sum() / len(conf)).item()


def classification_metrics(
    student_logits: Tensor,
    target: Tensor,
    teacher_logits: Tensor | None = None,
    k: int = 5,
) -> dict[str, float]:
    """All metrics at once.

    Keys: ``accuracy``, ``top{k}_accuracy`` (named by the requested ``k``, even when clipped),
    ``macro_f1``, ``ece``, ``nll``; with teacher logits also ``teacher_accuracy`` and
    :func:`teacher_agreement`'s ``agreement``, ``agreement_top<k>``, ``kl_teacher_student``.
    """
    out = {
        "accuracy": accuracy(student_logits, target),
        f"top{k}_accuracy": topk_accuracy(student_logits, target, k),
        "macro_f1": macro_f1(student_logits, target),
        "ece": expected_calibration_error(student_logits, target),
        "nll": negative_log_likelihood(student_logits, target),
    }
    if teacher_logits is not None:
        out["teacher_accuracy"] = accuracy(teacher_logits, target)
        out.update(teacher_agreement(student_logits, teacher_logits, k))
    return out


def teacher_agreement(
    student_logits: Tensor, teacher_logits: Tensor, k: int = 5
) -> dict[str, float]:
    """``agreement`` (top-1), ``agreement_top<k>`` (:func:`topk_overlap`) and
    ``kl_teacher_student`` (``KL(p_t || p_s)`` at T=1) of two logits in one label space."""
    return {
        "agreement": agreement(student_logits, teacher_logits),
        f"agreement_top{k}": topk_overlap(student_logits, teacher_logits, k),
        "kl_teacher_student": kl_divergence(student_logits, teacher_logits),
    }


class MetricAccumulator:
    """Collects validation batches (detached, CPU, float32) and computes metrics over all of them.

    >>> acc = MetricAccumulator()
    >>> for x, y in loader:                         # doctest: +SKIP
    ...     acc.update(student(x), y, teacher(x))
    >>> acc.compute(k=5)                            # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget all collected batches."""
        self._student: list[Tensor] = []
        self._target: list[Tensor] = []
        self._teacher: list[Tensor] = []

    def update(
        self, student_logits: Tensor, target: Tensor, teacher_logits: Tensor | None = None
    ) -> None:
        """Add one batch; teacher logits must be given for every batch or for none."""
        s = _logits(student_logits, "student logits")
        y = _target(target, s)
        if self._student and s.shape[1] != self._student[0].shape[1]:
            raise ShapeError(
                f"student logits {tuple(s.shape)} have {s.shape[1]} classes, earlier batches "
                f"had {self._student[0].shape[1]}"
            )
        if self._student and (teacher_logits is not None) != bool(self._teacher):
            raise ShapeError(
                "teacher logits must be given for every batch or for none",
                hint="pass teacher_logits to every update() call, or call reset() first",
            )
        if teacher_logits is not None:
            self._teacher.append(_pair(s, teacher_logits)[1].float())
        self._student.append(s.float())
        self._target.append(y)

    def __len__(self) -> int:
        """Number of examples collected so far."""
        return sum(len(y) for y in self._target)

    def compute(self, k: int = 5) -> dict[str, float]:
        """:func:`classification_metrics` over the concatenation of all batches."""
        if not self._student:
            raise ShapeError("no batches collected: call update() before compute()")
        teacher = torch.cat(self._teacher) if self._teacher else None
        return classification_metrics(
            torch.cat(self._student), torch.cat(self._target), teacher, k=k
        )
