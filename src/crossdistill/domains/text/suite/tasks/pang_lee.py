"""Pang & Lee sentence polarity (Pang & Lee, 2005): movie-review snippets, positive or negative
(gensim's 200-sentence sample)."""

from __future__ import annotations

from typing import Any

import numpy as np

from crossdistill.domains.text.suite.base import TEXT_TASKS, TextTask, cv_accuracy
from crossdistill.domains.text.suite.data import GENSIM_HINT, read_lines
from crossdistill.errors import DataError

FILE = "pang_lee_polarity.cor"
LABELS = {"__label__neg": 0, "__label__pos": 1}


def read_polarity() -> tuple[list[str], np.ndarray]:
    """``(sentences, labels)`` of ``pang_lee_polarity.cor`` (latin-1; each line is
    ``__label__pos`` or ``__label__neg``, a space, then the tokenised sentence)."""
    texts, labels = [], []
    for number, line in enumerate(read_lines(FILE, "latin-1"), 1):
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        if label not in LABELS:
            raise DataError(
                f"{FILE}:{number}: expected one of {list(LABELS)} first, got {label[:30]!r}",
                hint=f"reinstall gensim: {GENSIM_HINT}",
            )
        texts.append(text.strip())
        labels.append(LABELS[label])
    return texts, np.asarray(labels, dtype=np.int64)


@TEXT_TASKS.register("pang_lee")
class PangLee(TextTask):
    """5-fold logistic-regression accuracy on the embeddings of the 200 sentences (already
    small: ``quick`` uses them all)."""

    name = "pang_lee"
    headline = "accuracy"

    def run(self, encoder: Any, quick: bool = False) -> dict[str, Any]:
        texts, labels = read_polarity()
        return {**cv_accuracy(encoder.encode(texts), labels), "examples": len(texts)}
