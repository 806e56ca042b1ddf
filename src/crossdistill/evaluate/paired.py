"""Paired-data metrics: retrieval between a student's modality and text, zero-shot
classification, and agreement with a text teacher, from embeddings (the speech-text and
image-text suites build on them).

Every metric ranks *all* candidates (no top-k cut-off before MRR): a query's rank is one plus
the number of candidates that score strictly above its best relevant one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossdistill.data.checks import to_float
from crossdistill.errors import ConfigError, DataError
from crossdistill.evaluate.embeddings import cosine_matrix, paired_cosine

KS = (1, 5, 10)


def best_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of each query's best-scoring relevant candidate; ``scores`` ``(Q, G)``,
    ``relevant`` a ``(Q, G)`` boolean mask with at least one True per row."""
    if not relevant.any(axis=1).all():
        raise DataError("every query needs at least one relevant candidate")
    best = np.where(relevant, scores, -np.inf).max(axis=1, keepdims=True)
    return 1 + (scores > best).sum(axis=1)


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    """R@1, R@5, R@10 and MRR of 1-based ranks."""
    out = {f"r_at_{k}": float(np.mean(ranks <= k)) for k in KS}
    out["mrr"] = float(np.mean(1.0 / ranks))
    return out


def cross_retrieval(
    queries: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray
) -> dict[str, float]:
    """Cosine retrieval: each query's relevant candidates share its label."""
    scores = cosine_matrix(queries, gallery)
    relevant = np.asarray(query_labels)[:, None] == np.asarray(gallery_labels)[None, :]
    return rank_metrics(best_ranks(scores, relevant))


def zero_shot(embeddings: np.ndarray, class_embeddings: np.ndarray) -> np.ndarray:
    """The class whose (text) embedding is nearest by cosine, for each row."""
    return cosine_matrix(embeddings, class_embeddings).argmax(axis=1)


def paired_suite(
    student: np.ndarray,
    student_texts: np.ndarray,
    teacher_texts: np.ndarray,
    text_id: np.ndarray,
    targets: np.ndarray | None,
    student_classes: np.ndarray | None,
    teacher_classes: np.ndarray | None,
    teacher_of_example: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every metric of the suite from embeddings.

    ``student`` ``(N, D)``: one row per example (clip, image); ``student_texts`` ``(G, D)``: the
    split's distinct texts in the student's text space (its own text tower, or the teacher's
    space when the student was trained into it); ``teacher_texts`` ``(G, D_t)``: the same texts
    by the teacher; ``text_id`` ``(N,)``: which text each example pairs with; ``targets``,
    ``*_classes``: class ids and class-name embeddings for zero-shot classification;
    ``teacher_of_example``: the teacher's embedding of each example's text, in the student's
    space (for the cosine to the teacher).
    """
    gallery_ids = np.arange(len(student_texts))
    out: dict[str, Any] = {
        "examples": len(student),
        "texts": len(student_texts),
        "to_text": cross_retrieval(student, student_texts, text_id, gallery_ids),
        "from_text": cross_retrieval(student_texts, student, gallery_ids, text_id),
    }
    if targets is not None and student_classes is not None:
        predicted = zero_shot(student, student_classes)
        out["zero_shot_acc"] = float(np.mean(predicted == targets))
        if teacher_classes is not None:
            by_teacher = zero_shot(teacher_texts, teacher_classes)[text_id]
            out["teacher_zero_shot_acc"] = float(np.mean(by_teacher == targets))
            out["zero_shot_agreement"] = float(np.mean(predicted == by_teacher))
    if teacher_of_example is not None:
        out["teacher_cosine"] = float(np.mean(paired_cosine(student, teacher_of_example)))
    return out


def chance(text_id: np.ndarray, n_texts: int, dim: int = 64, seeds: int = 3) -> dict[str, Any]:
    """The suite's retrieval metrics with random embeddings (mean over ``seeds``)."""
    runs = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        student, texts = rng.normal(size=(len(text_id), dim)), rng.normal(size=(n_texts, dim))
        runs.append(cross_retrieval(student, texts, text_id, np.arange(n_texts)))
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


# ----------------------------------------------------------------------- from a run directory


@torch.no_grad()
def embed_batches(
    model: nn.Module, items: Sequence[Any], batch_size: int, device: str = "cpu"
) -> np.ndarray:
    """``model`` over ``items`` (tensors stacked, or strings listed) in batches, eval mode."""
    model.eval()
    out = []
    for start in range(0, len(items), batch_size):
        chunk = [items[i] for i in range(start, min(start + batch_size, len(items)))]
        batch = torch.stack(chunk).to(device) if isinstance(chunk[0], torch.Tensor) else chunk
        out.append(model(batch).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


class Items:
    """Indexable float views of a modality, converted as the training examples are (uint8
    images to [0, 1])."""

    def __init__(self, values: Any) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> torch.Tensor:
        return to_float(self.values[i])


class Embedding(nn.Module):
    """A student wrapper (input pipeline included) as a module returning its ``embedding``."""

    def __init__(self, student: nn.Module, where: str | Path = "the student") -> None:
        super().__init__()
        self.student = student
        self.where = str(where)

    def forward(self, batch: Any) -> torch.Tensor:
        knowledge = self.student(batch)
        if "embedding" not in knowledge:
            raise ConfigError(
                f"{self.where}: the student emits no 'embedding'",
                hint="name its output in the recipe: `student: {outputs: [embedding]}`",
            )
        return knowledge["embedding"]
