"""The text task interface, its registry, and the metrics the tasks share.

A task is one registered class in one file of ``evaluate/text/tasks/``: it reads its data, asks
the encoder for embeddings and returns ``{metric: value}`` with its ``headline`` metric among
them. ``quick=True`` uses a small deterministic subset where the full set is slow to encode or
fit (each task's docstring says which).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from crossdistill.domains.text.suite.encoders import TextEncoder
from crossdistill.errors import ConfigError
from crossdistill.evaluate.embeddings import unit_rows
from crossdistill.registry import Registry

FOLDS = 5
SEED = 0


class TextTask:
    """One evaluation task: ``run(encoder, quick) -> {metric: value}``."""

    name: ClassVar[str] = ""
    headline: ClassVar[str] = ""
    # Tasks that compare with a teacher get it as `teacher=` when the suite builds them.
    needs_teacher: ClassVar[bool] = False
    # Part of the suite's `avg` (teacher agreement is reported beside it, not in it).
    in_average: ClassVar[bool] = True

    def run(self, encoder: TextEncoder, quick: bool = False) -> dict[str, Any]:
        raise NotImplementedError


TEXT_TASKS: Registry[type[TextTask]] = Registry("text task")


# ------------------------------------------------------------------------------- metrics


def correlation(x: np.ndarray, y: np.ndarray, kind: str) -> float:
    """Spearman or Pearson correlation; 0.0 when one side is constant (no signal at all)."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    functions = {"spearman": stats.spearmanr, "pearson": stats.pearsonr}
    return float(functions[kind](x, y)[0])


def cv_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = FOLDS) -> dict[str, float]:
    """Mean and std of the accuracy of logistic regression over ``folds`` shuffled folds.

    ``KFold(shuffle=True, random_state=0)``; ``LogisticRegression`` (L2, C=1, lbfgs,
    ``max_iter=2000``, seed 0): the linear-probe protocol of SentEval (Conneau & Kiela, 2018)
    without its hyper-parameter search, on L2-normalised embeddings. The normalisation makes
    the probe as scale-free as the cosine tasks: with a fixed C, a model whose vectors happen to
    be short (a static table's mean of token vectors) would otherwise be regularised towards
    chance, and one emitting unit vectors would not.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold

    labels = np.asarray(labels)
    features = unit_rows(features)
    if len(labels) < folds:
        raise ConfigError(f"{len(labels)} examples cannot be split into {folds} folds")
    scores = []
    for train, test in KFold(folds, shuffle=True, random_state=SEED).split(features):
        classes = np.unique(labels[train])
        if len(classes) == 1:  # a fold with one class: the constant prediction
            scores.append(float(np.mean(labels[test] == classes[0])))
            continue
        model = LogisticRegression(C=1.0, max_iter=2000, random_state=SEED)
        model.fit(features[train], labels[train])
        scores.append(float(np.mean(model.predict(features[test]) == labels[test])))
    return {"accuracy": float(np.mean(scores)), "accuracy_std": float(np.std(scores))}


def retrieval_metrics(scores: np.ndarray, answers: np.ndarray) -> dict[str, float]:
    """R@1, R@10 and MRR of queries (rows of ``scores``) whose right item is ``answers[i]``.

    A query's rank is the number of corpus items scoring at least as high as its right one, so
    ties count against the model (an encoder that scores everything equally gets rank N, not 1).
    """
    scores = np.asarray(scores, dtype=np.float64)
    answers = np.asarray(answers, dtype=np.int64)
    right = scores[np.arange(len(answers)), answers][:, None]
    ranks = np.sum(scores >= right, axis=1)
    return {
        "r@1": float(np.mean(ranks <= 1)),
        "r@10": float(np.mean(ranks <= 10)),
        "mrr": float(np.mean(1.0 / ranks)),
        "queries": len(answers),
        "corpus": int(scores.shape[1]),
    }


def every_nth(n: int, keep: int) -> np.ndarray:
    """At most ``keep`` indices spread evenly over ``range(n)``: a deterministic subset."""
    if n <= keep:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, keep).round().astype(np.int64))
