"""Evaluators: a student (and its teacher) over a loader of evaluation batches -> metrics.

They know batches and Knowledge, not runs, recipes or the trainer: the trainer calls
:func:`evaluate_student` every epoch, and the ``task`` suite calls it on a finished run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from crossdistill._util.device import autocast, to_device
from crossdistill.core.knowledge import EMBEDDING, LOGITS, SCORES, TEXT_EMBEDDING
from crossdistill.core.wrappers import Student, Teacher
from crossdistill.errors import ConfigError, KnowledgeError, ShapeError
from crossdistill.evaluate.metrics import (
    accuracy,
    binary_metrics,
    classification_metrics,
    per_class,
    teacher_agreement,
)
from crossdistill.losses.logit.bce import dense_target

log = logging.getLogger(__name__)


class _Classification:
    """Classification of the data's labels, and agreement with the teacher's label space.

    The data's metrics (accuracy, top-k, macro-F1, calibration, per-class precision / recall /
    F1) are of the student's ``logits``, and only when their width is the data's class count:
    a student that learns a pretrained teacher's 1000 classes on a 10-class data set has no
    accuracy on it. Teacher agreement (top-1, top-k overlap, KL) compares the teacher's
    ``logits`` with the student output of the same width — its ``logits``, or a head such as
    ``teacher_logits`` trained by KD — so it is reported whatever the data's label space.

    A top-k metric over ``C <= k`` classes is 1.0 whatever the student predicts: it is left
    out (and named in ``left_out``, which the check before training warns about).
    """

    def __init__(self, topk: int, num_classes: int | None, class_names: Any) -> None:
        self.topk = topk
        self.left_out: list[str] = []
        self.num_classes = num_classes or None
        self.class_names = list(class_names or [])
        self.data: list[torch.Tensor] = []
        self.target: list[torch.Tensor] = []
        self.teacher: list[torch.Tensor] = []
        self.mimic: list[torch.Tensor] = []
        self.mimic_key: str | None = None

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any], t: Mapping | None) -> None:
        if LOGITS in out and "target" in batch:
            self.data.append(out[LOGITS].detach().float().cpu())
            self.target.append(batch["target"].detach().cpu())
        teacher = None if t is None else t.get(LOGITS)
        if teacher is None:
            return
        if self.mimic_key is None:
            width = teacher.shape[-1]
            keys = [LOGITS, *sorted(k for k in out if k != LOGITS and "logits" in k)]
            fits = [k for k in keys if k in out and out[k].shape[-1] == width]
            self.mimic_key = fits[0] if fits else ""
        if self.mimic_key:
            self.teacher.append(teacher.detach().float().cpu())
            self.mimic.append(out[self.mimic_key].detach().float().cpu())

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        labels = torch.cat(self.target) if self.target else None
        if self.data and labels is not None:
            logits = torch.cat(self.data)
            if self.num_classes in (None, logits.shape[1]):
                out.update(classification_metrics(logits, labels, None, k=self.topk))
                out["per_class"] = per_class(logits, labels, self.class_names)
        if self.teacher:
            teacher = torch.cat(self.teacher)
            if labels is not None and self.num_classes in (None, teacher.shape[1]):
                out["teacher_accuracy"] = accuracy(teacher, labels)
            out.update(teacher_agreement(torch.cat(self.mimic), teacher, self.topk))
            if self.mimic_key != LOGITS:
                out["agreement_of"] = self.mimic_key
        self._leave_out_trivial_topk(out)
        if not out:
            raise ShapeError(
                f"nothing to evaluate: the student's logits have "
                f"{self.data[0].shape[1] if self.data else 'no'} classes, the data has "
                f"{self.num_classes}, and no student output matches the teacher's label space",
                hint="give the student a head of the data's classes, or of the teacher's",
            )
        return out

    def _leave_out_trivial_topk(self, out: dict[str, Any]) -> None:
        k = self.topk
        ranked = {f"top{k}_accuracy": self.data, f"agreement_top{k}": self.mimic}
        for key, logits in ranked.items():
            if key in out and k >= logits[0].shape[-1]:
                del out[key]
                self.left_out.append(f"{key} ({logits[0].shape[-1]} classes)")


class _Binary:
    """Independent yes/no decisions: multi-label ``(B, K)`` or frame-level ``(B, N, K)``
    logits (``K = 1`` for one decision per example or frame, e.g. voice activity).

    The student decides "yes" where its ``logits`` are > 0, the data where its targets (0/1
    labels of the logits' shape, or without its trailing 1) are > 0.5; metrics as
    :func:`~crossdistill.evaluate.metrics.binary_metrics`. With a teacher output of the
    logits' shape (its ``logits``, else the first such key), ``agreement`` is the fraction of
    decisions the two share, and ``teacher_accuracy`` / ``teacher_macro_f1`` score the
    teacher itself. The teacher says "yes" where its logits are > 0 — or > 0.5 when the key
    is not ``logits`` and holds only values in [0, 1] (probabilities, as a model ending in a
    sigmoid emits), decided on the first batch.
    """

    def __init__(self, class_names: Any) -> None:
        self.class_names = list(class_names or [])
        self.student: list[torch.Tensor] = []
        self.real: list[torch.Tensor] = []
        self.teacher: list[torch.Tensor] = []
        self.teacher_key: str | None = None
        self.threshold = 0.0

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any], t: Mapping | None) -> None:
        s = out[LOGITS].detach().float().cpu()
        width = s.shape[-1]
        self.student.append((s > 0).reshape(-1, width))
        if batch.get("target") is not None:
            real = dense_target(batch["target"].detach().cpu(), s, "evaluation")
            self.real.append((real > 0.5).reshape(-1, width))
        if t is None:
            return
        if self.teacher_key is None:
            keys = [LOGITS, *sorted(k for k in t if k != LOGITS)]
            fits = [k for k in keys if k in t and tuple(t[k].shape) == tuple(s.shape)]
            self.teacher_key = fits[0] if fits else ""
            if fits and fits[0] != LOGITS:
                low, high = torch.aminmax(t[fits[0]].detach().float())
                self.threshold = 0.5 if low.item() >= 0 and high.item() <= 1 else 0.0
        if self.teacher_key:
            decided = t[self.teacher_key].detach().float().cpu() > self.threshold
            self.teacher.append(decided.reshape(-1, width))

    def compute(self) -> dict[str, Any]:
        if not self.student:
            raise ShapeError("no examples to evaluate: the evaluation data is empty")
        predicted = torch.cat(self.student)
        out: dict[str, Any] = {}
        real = torch.cat(self.real) if self.real else None
        if real is not None:
            out.update(binary_metrics(predicted, real, self.class_names))
        if self.teacher:
            teacher = torch.cat(self.teacher)
            out["agreement"] = (predicted == teacher).double().mean().item()
            if real is not None:
                scored = binary_metrics(teacher, real, self.class_names)
                out["teacher_accuracy"] = scored["accuracy"]
                out["teacher_macro_f1"] = scored["macro_f1"]
        if not out:
            raise ShapeError(
                "nothing to evaluate: the data has no targets, and no teacher output has the "
                f"student's logits' shape {tuple(self.student[0].shape)}",
                hint="give the evaluation data 0/1 targets, or the run a teacher",
            )
        return out


class _Embeddings:
    """Agreement of student and teacher embeddings.

    ``cosine`` (mean of ``cos(s_i, t_i)``) and ``mse`` (mean of ``(s - t)**2`` over elements) need
    both in one space, so they are reported only when the widths match; ``sim_pearson``, the
    Pearson correlation of the two models' pairwise cosine similarities within each batch (off
    the diagonal, pooled over batches), compares the geometry of the spaces whatever the widths.
    """

    def __init__(self) -> None:
        self.n = 0
        self.elements = 0
        self.cosine = 0.0
        self.squared_error = 0.0
        self.same_space = True
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any], t: Mapping | None) -> None:
        if t is None:
            raise ConfigError(
                "evaluating an embedding student needs the teacher's embeddings",
                hint="give the run a teacher (or a knowledge store holding its 'embedding')",
            )
        for side, knowledge in (("student", out), ("teacher", t)):
            if EMBEDDING not in knowledge:
                raise KnowledgeError(
                    f"the {side} emitted no {EMBEDDING!r} (it has {sorted(knowledge)})",
                    hint="name the model's output: `outputs: [embedding]` in the recipe",
                )
        s = out[EMBEDDING].detach().to("cpu", torch.float64).flatten(1)
        te = t[EMBEDDING].detach().to("cpu", torch.float64).flatten(1)
        if len(s) != len(te):
            raise ShapeError(
                f"{len(s)} student embeddings but {len(te)} teacher embeddings in one batch"
            )
        self.n += len(s)
        self.same_space = self.same_space and s.shape == te.shape
        if self.same_space:
            self.elements += s.numel()
            self.cosine += F.cosine_similarity(s, te, dim=1, eps=1e-12).sum().item()
            self.squared_error += (s - te).square().sum().item()
        off = ~torch.eye(len(s), dtype=torch.bool)
        sims = [
            F.normalize(x, dim=1, eps=1e-12) @ F.normalize(x, dim=1, eps=1e-12).T for x in (s, te)
        ]
        self.pairs.append((sims[0][off], sims[1][off]))

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            raise ShapeError("no examples to evaluate: the evaluation data is empty")
        out: dict[str, float] = {}
        if self.same_space:
            out = {"cosine": self.cosine / self.n, "mse": self.squared_error / self.elements}
        s, t = (torch.cat(side) for side in zip(*self.pairs, strict=True))
        if len(s) > 1:
            out["sim_pearson"] = torch.corrcoef(torch.stack([s, t]))[0, 1].item()
        return out


class _Towers:
    """A student with two towers (``embedding``, e.g. speech, and ``text_embedding``): how well
    the two rows of each example agree, and the first tower's agreement with the teacher.

    ``pair_cosine``: mean ``cos(a_i, b_i)``; ``pair_top1``: the fraction of rows ``a_i`` whose
    most similar ``b`` row *within the batch* is their own (or ties it: the same text spoken
    twice), so it depends on the evaluation batch size. With a teacher, ``cosine``/``mse``/
    ``sim_pearson`` of ``embedding`` as in :class:`_Embeddings`.
    """

    def __init__(self) -> None:
        self.n = 0
        self.cosine = 0.0
        self.hits = 0
        self.teacher: _Embeddings | None = None

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any], t: Mapping | None) -> None:
        a, b = (
            F.normalize(out[k].detach().to("cpu", torch.float64).flatten(1), dim=1, eps=1e-12)
            for k in (EMBEDDING, TEXT_EMBEDDING)
        )
        sims = a @ b.T
        self.n += len(a)
        self.cosine += sims.diagonal().sum().item()
        self.hits += (sims.max(dim=1).values <= sims.diagonal() + 1e-9).sum().item()
        if t is not None and EMBEDDING in t:
            self.teacher = self.teacher or _Embeddings()
            self.teacher.update(out, batch, t)

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            raise ShapeError("no examples to evaluate: the evaluation data is empty")
        out = {"pair_cosine": self.cosine / self.n, "pair_top1": self.hits / self.n}
        return out | (self.teacher.compute() if self.teacher else {})


class _Ranking:
    """Ranking of each query's candidates (column 0 the positive) by the student's ``scores``:
    ``top1`` (the positive ranked first), ``mrr`` over the candidates and, with the teacher's
    scores, ``teacher_top1_agreement`` (both put the same candidate first) and
    ``teacher_spearman`` (mean over queries of the rank correlation of the two score rows)."""

    def __init__(self) -> None:
        self.n = 0
        self.sums = {
            "top1": 0.0,
            "mrr": 0.0,
            "teacher_top1_agreement": 0.0,
            "teacher_spearman": 0.0,
        }
        self.with_teacher = True

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any], t: Mapping | None) -> None:
        s = out[SCORES].detach().to("cpu", torch.float64)
        # rank of the positive: 1 + candidates scoring strictly higher (ties favour the model)
        rank = 1 + (s[:, 1:] > s[:, :1]).sum(1)
        self.n += len(s)
        self.sums["top1"] += (rank == 1).sum().item()
        self.sums["mrr"] += (1.0 / rank).sum().item()
        self.with_teacher = self.with_teacher and t is not None and SCORES in t
        if self.with_teacher:
            te = t[SCORES].detach().to("cpu", torch.float64)  # type: ignore[index]
            if te.shape != s.shape:
                raise ShapeError(
                    f"student scores {tuple(s.shape)} and teacher scores {tuple(te.shape)} differ"
                )
            agree = s.argmax(1) == te.argmax(1)
            self.sums["teacher_top1_agreement"] += agree.sum().item()
            ranks = [x.argsort(1).argsort(1).to(torch.float64) for x in (s, te)]
            centred = [r - r.mean(1, keepdim=True) for r in ranks]
            cov = (centred[0] * centred[1]).sum(1)
            norm = centred[0].norm(dim=1) * centred[1].norm(dim=1)
            self.sums["teacher_spearman"] += (cov / norm.clamp(min=1e-12)).sum().item()

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            raise ShapeError("no examples to evaluate: the evaluation data is empty")
        keys = list(self.sums) if self.with_teacher else ["top1", "mrr"]
        return {k: self.sums[k] / self.n for k in keys}


def _teacher_knowledge(batch: Mapping[str, Any], teacher: Teacher | None) -> Mapping | None:
    """The teacher's Knowledge: from a store when the batch carries it, else run online."""
    if "knowledge" in batch:
        return batch["knowledge"]
    if teacher is not None:
        return teacher(batch["views"][teacher.view])
    return None


def _classification(loader: Any, topk: int) -> _Classification:
    dataset = getattr(loader, "dataset", None)
    return _Classification(
        topk, getattr(dataset, "num_classes", None), getattr(dataset, "class_names", None)
    )


def _evaluate(
    student: Student,
    loader: Any,
    teacher: Teacher | None,
    device: torch.device | None,
    amp: torch.dtype | None,
    pick: Callable[[Mapping[str, Any], Mapping[str, Any]], Any],
) -> dict[str, float]:
    """One pass over ``loader``; ``pick(first_output, first_batch)`` chooses the metrics."""
    device = device or next(student.parameters()).device
    was_training = student.training
    student.eval()
    metrics = None
    try:
        with torch.no_grad():
            for batch in loader:
                batch = to_device(batch, device)
                with autocast(device, amp):
                    out = student(batch["views"]["student"])
                    t = _teacher_knowledge(batch, teacher)
                if metrics is None:
                    metrics = pick(out, batch)
                metrics.update(out, batch, t)
    finally:
        student.train(was_training)
    if metrics is None:
        raise ShapeError("no batches to evaluate: the evaluation data is empty")
    return metrics.compute()


def evaluate_classification(
    student: Student,
    loader: Any,
    teacher: Teacher | None = None,
    device: torch.device | None = None,
    amp: torch.dtype | None = None,
    topk: int = 5,
) -> dict[str, float]:
    """Accuracy, top-k and calibration of the student; agreement and KL with the teacher.

    The teacher's logits come from ``batch["knowledge"]`` when a store provides them.
    """
    return _evaluate(
        student, loader, teacher, device, amp, lambda out, b: _classification(loader, topk)
    )


def evaluate_embeddings(
    student: Student,
    loader: Any,
    teacher: Teacher | None = None,
    device: torch.device | None = None,
    amp: torch.dtype | None = None,
) -> dict[str, float]:
    """Agreement of the student's ``embedding`` with the teacher's, over all examples.

    ``cosine``: mean over examples of ``cos(s_i, t_i)``; ``mse``: mean over all elements of
    ``(s - t)**2`` (both only when the widths match); ``sim_pearson``: correlation of the two
    models' within-batch pairwise cosine similarities (any widths). The teacher's embeddings
    come from ``batch["knowledge"]`` when a store provides them, else from running ``teacher``.
    """
    return _evaluate(student, loader, teacher, device, amp, lambda out, b: _Embeddings())


def _yes_no(logits: torch.Tensor, target: torch.Tensor | None) -> bool:
    """Whether the logits are independent yes/no decisions: one per example or frame (a
    trailing 1), or targets with more than one value per example (multi-label, frames)."""
    if logits.dim() >= 2 and logits.shape[-1] == 1:
        return True
    return target is not None and target.dim() >= 2 and target.shape[-1] == logits.shape[-1]


def evaluate_student(
    student: Student,
    loader: Any,
    teacher: Teacher | None = None,
    device: torch.device | None = None,
    amp: torch.dtype | None = None,
    topk: int = 5,
) -> dict[str, float]:
    """Classification metrics when the student emits logits (of the data's labels, of the
    teacher's label space, or both: see :class:`_Classification`), yes/no metrics when its
    logits are independent sigmoid decisions (:class:`_Binary`), ranking metrics when it
    emits candidate ``scores``, paired-row agreement when it has two towers
    (``text_embedding``), else embedding agreement with the teacher; decided on the first
    batch, in one pass."""
    return _evaluate(student, loader, teacher, device, amp, _pick(loader, topk))


def _pick(loader: Any, topk: int) -> Callable[[Mapping[str, Any], Mapping[str, Any]], Any]:
    """How :func:`evaluate_student` chooses its metrics from the first output and batch."""

    def pick(out: Mapping[str, Any], batch: Mapping[str, Any]) -> Any:
        logits = any("logits" in key for key in out)
        if LOGITS in out and _yes_no(out[LOGITS], batch.get("target")):
            return _Binary(getattr(getattr(loader, "dataset", None), "class_names", None))
        if logits and "target" in batch:
            return _classification(loader, topk)
        if SCORES in out:
            return _Ranking()
        if TEXT_EMBEDDING in out:
            return _Towers()
        if EMBEDDING in out or not logits:
            return _Embeddings()
        return _classification(loader, topk)  # logits, no labels: agreement with the teacher

    return pick


class _Preview:
    """One batch posing as a loader (with the loader's dataset, for its class names)."""

    def __init__(self, batch: Mapping[str, Any], dataset: Any) -> None:
        self.batch, self.dataset = batch, dataset

    def __iter__(self) -> Any:
        yield self.batch


def check_evaluable(
    student: Student,
    batch: Mapping[str, Any],
    dataset: Any,
    teacher: Teacher | None = None,
    device: torch.device | None = None,
    topk: int = 5,
) -> None:
    """Evaluate ``batch`` (a preview of the evaluation data, of ``dataset``) before training,
    so that a student whose outputs no evaluator can score fails before anything is written
    rather than after the last epoch. The error is the evaluator's. Top-k metrics that ``topk``
    would make trivially 1.0 (``topk`` not below the classes ranked) are left out of every
    evaluation; this says so once, with the setting to change."""
    preview = _Preview(batch, dataset)
    chosen: list[Any] = []  # the metrics the evaluator picked, to read what they left out

    def pick(out: Mapping[str, Any], first: Mapping[str, Any]) -> Any:
        chosen.append(_pick(preview, topk)(out, first))
        return chosen[0]

    _evaluate(student, preview, teacher, device, None, pick)
    left_out = getattr(chosen[0], "left_out", None) if chosen else None
    if left_out:
        log.warning(
            "eval.topk is %d, not below the classes these metrics rank: %s would be 1.0 "
            "whatever the student predicts, so they are left out; set eval.topk below the "
            "class count to report them",
            topk,
            ", ".join(left_out),
        )
