"""Evaluation of students without logits: embedding agreement, and the classification dispatcher."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from crossdistill.core.wrappers import Student, Teacher
from crossdistill.errors import ConfigError, ShapeError
from crossdistill.evaluate.evaluators import evaluate_embeddings, evaluate_student


class Counting(nn.Module):
    """A linear map that counts its forward calls; ``twice`` returns its output twice."""

    def __init__(self, d_in: int, d_out: int, twice: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)
        self.twice = twice
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        y = self.fc(x)
        return (y, y) if self.twice else y


def _batches(n_batches: int = 3, size: int = 5, d: int = 6, target: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        x = torch.randn(size, d, generator=g)
        batch: dict[str, Any] = {"views": {"teacher": x, "student": x}}
        if target:
            batch["target"] = torch.randint(0, 4, (size,), generator=g)
        out.append(batch)
    return out


def _sim_pearson(s: np.ndarray, t: np.ndarray, size: int) -> float:
    """Pearson correlation of the off-diagonal within-batch cosine similarities, pooled."""
    pooled: list[list[float]] = [[], []]
    for start in range(0, len(s), size):
        for side, x in enumerate((s[start : start + size], t[start : start + size])):
            u = x / np.linalg.norm(x, axis=1, keepdims=True)
            c = u @ u.T
            pooled[side] += [c[i, j] for i in range(len(c)) for j in range(len(c)) if i != j]
    return float(np.corrcoef(pooled[0], pooled[1])[0, 1])


def _numpy_reference(s: np.ndarray, t: np.ndarray, size: int = 5) -> dict[str, float]:
    cos = (s * t).sum(1) / (np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1))
    return {
        "cosine": float(cos.mean()),
        "mse": float(((s - t) ** 2).mean()),
        "sim_pearson": _sim_pearson(s, t, size),
    }


def test_evaluate_embeddings_matches_numpy() -> None:
    torch.manual_seed(0)
    student = Student(Counting(6, 4), outputs=["embedding"])
    teacher = Teacher(Counting(6, 4), outputs=["embedding"])
    batches = _batches()
    metrics = evaluate_embeddings(student, iter(batches), teacher)
    x = torch.cat([b["views"]["student"] for b in batches])
    with torch.no_grad():
        s, t = student.model.fc(x).double().numpy(), teacher.model.fc(x).double().numpy()
    ref = _numpy_reference(s, t)
    assert metrics.keys() == ref.keys()
    for key in ref:
        assert metrics[key] == pytest.approx(ref[key], rel=1e-6)
    assert student.training  # restored


def test_teacher_embeddings_from_the_store() -> None:
    student = Student(Counting(6, 4), outputs=["embedding"])
    batches = _batches(n_batches=2)
    with torch.no_grad():
        for b in batches:
            b["knowledge"] = {"embedding": student.model.fc(b["views"]["student"])}
    metrics = evaluate_embeddings(student, batches)
    assert metrics["cosine"] == pytest.approx(1.0) and metrics["mse"] == pytest.approx(0.0)
    assert metrics["sim_pearson"] == pytest.approx(1.0)


def test_evaluate_student_dispatches_in_one_pass() -> None:
    emb = Student(Counting(6, 4), outputs=["embedding"])
    metrics = evaluate_student(
        emb, iter(_batches()), Teacher(Counting(6, 4), outputs=["embedding"])
    )
    assert set(metrics) == {"cosine", "mse", "sim_pearson"} and emb.model.calls == 3
    clf = Student(Counting(6, 4))  # emits logits
    teacher = Teacher(Counting(6, 4))
    metrics = evaluate_student(clf, iter(_batches(target=True)), teacher, topk=2)
    assert {"accuracy", "top2_accuracy", "agreement"} <= set(metrics) and clf.model.calls == 3
    # logits but no targets (an unlabelled text split): embedding agreement needs an embedding
    both = Student(Counting(6, 4, twice=True), outputs=["logits", "embedding"])
    metrics = evaluate_student(both, _batches(), Teacher(Counting(6, 4), outputs=["embedding"]))
    assert set(metrics) == {"cosine", "mse", "sim_pearson"}


def test_embedding_evaluation_errors() -> None:
    student = Student(Counting(6, 4), outputs=["embedding"])
    with pytest.raises(ConfigError, match="needs the teacher's embeddings"):
        evaluate_embeddings(student, _batches())
    with pytest.raises(ShapeError, match="empty"):
        evaluate_embeddings(student, [])


def test_students_of_another_width_are_compared_by_their_similarity_structure() -> None:
    torch.manual_seed(0)
    student = Student(Counting(6, 3), outputs=["embedding"])
    teacher = Teacher(Counting(6, 4), outputs=["embedding"])
    batches = _batches()
    metrics = evaluate_embeddings(student, batches, teacher)
    x = torch.cat([b["views"]["student"] for b in batches])
    with torch.no_grad():
        s, t = student.model.fc(x).double().numpy(), teacher.model.fc(x).double().numpy()
    assert set(metrics) == {"sim_pearson"}  # no cosine or mse across two spaces
    assert metrics["sim_pearson"] == pytest.approx(_sim_pearson(s, t, 5), rel=1e-6)
