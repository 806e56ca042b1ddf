"""The metrics of a task sequence, from its accuracy matrix and the models' predictions.

``R[i][j]`` is the accuracy on task ``j``'s test examples after training task ``i`` (from 0);
``R`` may hold fewer rows than tasks (the tasks trained so far), and every function reads the
last row as "now". Each is written from its paper's formula and checked against a matrix
worked by hand in tests/test_continual.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Matrix = Sequence[Sequence[float]]


def _rows(matrix: Matrix) -> np.ndarray:
    r = np.asarray(matrix, dtype=np.float64)
    if r.ndim != 2 or len(r) == 0 or len(r) > r.shape[1]:
        raise ValueError(
            f"an accuracy matrix has 1..T rows of T tasks each, got shape {tuple(r.shape)}"
        )
    return r


def average_accuracy(matrix: Matrix) -> float:
    """The mean accuracy over the tasks trained so far, after the last of them:
    ``A_k = (1/k) Σ_{j<=k} R[k][j]`` (Chaudhry et al. 2018, arXiv:1801.10112, eq. 3); after
    the last task, the mean of the last row."""
    r = _rows(matrix)
    k = len(r) - 1
    return float(r[k, : k + 1].mean())


def average_accuracies(matrix: Matrix) -> list[float]:
    """:func:`average_accuracy` after each task (its mean is the "average incremental
    accuracy" of Rebuffi et al. 2017, iCaRL, arXiv:1611.07725)."""
    r = _rows(matrix)
    return [average_accuracy(r[: i + 1]) for i in range(len(r))]


def forgetting(matrix: Matrix) -> float | None:
    """Average forgetting (Chaudhry et al. 2018, arXiv:1801.10112, eq. 4-5): for each earlier
    task ``j < k``, the best accuracy any earlier model had on it minus the accuracy now,
    ``max_{j <= i < k} R[i][j] − R[k][j]``, averaged over ``j``. The maximum runs over the
    models that had trained on task ``j`` (the paper evaluates a task only once it is seen);
    ``None`` after the first task (nothing to forget yet)."""
    r = _rows(matrix)
    k = len(r) - 1
    if k == 0:
        return None
    return float(np.mean([r[j:k, j].max() - r[k, j] for j in range(k)]))


def backward_transfer(matrix: Matrix) -> float | None:
    """Backward transfer (Lopez-Paz & Ranzato 2017, GEM, arXiv:1706.08840, eq. 3):
    ``(1/k) Σ_{j<k} R[k][j] − R[j][j]``, negative when learning later tasks lowered the
    accuracy on earlier ones; ``None`` after the first task."""
    r = _rows(matrix)
    k = len(r) - 1
    if k == 0:
        return None
    return float(np.mean([r[k, j] - r[j, j] for j in range(k)]))


def churn(before: Sequence[int], after: Sequence[int], target: Sequence[int]) -> dict[str, float]:
    """How two models' predictions on the same examples differ: ``churn``, the fraction of
    examples whose predicted class changed (Fard et al. 2016, "Launch and iterate: reducing
    prediction churn"), and ``negative_flip``, the fraction right before and wrong after (Yan et
    al. 2021, positive-congruent training, arXiv:2011.09161); ``positive_flip`` the reverse."""
    b, a, y = (np.asarray(v) for v in (before, after, target))
    if not (b.shape == a.shape == y.shape) or b.ndim != 1 or len(b) == 0:
        raise ValueError(
            f"churn compares predictions of the same examples, got shapes {b.shape}, "
            f"{a.shape} and targets {y.shape}"
        )
    return {
        "churn": float(np.mean(b != a)),
        "negative_flip": float(np.mean((b == y) & (a != y))),
        "positive_flip": float(np.mean((b != y) & (a == y))),
    }


def summary(
    matrix: Matrix,
    predictions: Sequence[Sequence[int]] = (),
    target: Sequence[int] = (),
) -> dict[str, Any]:
    """Everything continual.json reports of ``matrix``: the matrix, the average accuracy,
    forgetting and backward transfer now, the average accuracy after each task, and (given each
    model's ``predictions`` on the same test examples, and their ``target``) the churn between
    each model and the one before it."""
    r = _rows(matrix)
    return {
        "accuracy": r.tolist(),
        "average_accuracy": average_accuracy(r),
        "forgetting": forgetting(r),
        "backward_transfer": backward_transfer(r),
        "average_accuracy_per_task": average_accuracies(r),
        "churn": [
            {"task": i + 1, **churn(predictions[i - 1], predictions[i], target)}
            for i in range(1, len(predictions))
        ],
    }
