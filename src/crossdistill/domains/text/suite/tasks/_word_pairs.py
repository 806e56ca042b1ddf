"""Word-similarity tasks: Spearman correlation of the model's cosine with human ratings."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from crossdistill.domains.text.suite.base import TextTask, correlation
from crossdistill.domains.text.suite.data import read_word_pairs
from crossdistill.domains.text.suite.encoders import TextEncoder
from crossdistill.evaluate.embeddings import paired_cosine


class WordPairTask(TextTask):
    """Each word is embedded alone (as a one-word text); the score of a pair is the cosine of
    its two embeddings; the metric is Spearman's rho against the human means over every pair.
    A word the model has no token for embeds as zero for a static model: cosine 0. The sets
    are small, so ``quick`` uses them whole."""

    file: ClassVar[str] = ""
    headline = "spearman"

    def run(self, encoder: TextEncoder, quick: bool = False) -> dict[str, Any]:
        first, second, human = read_word_pairs(self.file)
        words = sorted(set(first) | set(second))
        index = {w: i for i, w in enumerate(words)}
        vectors = encoder.encode(words)
        a = vectors[[index[w] for w in first]]
        b = vectors[[index[w] for w in second]]
        cos = paired_cosine(a, b)
        return {
            "spearman": correlation(cos, human, "spearman"),
            "pearson": correlation(cos, human, "pearson"),
            "pairs": len(human),
            "zero_vectors": int(np.sum(~np.any(vectors != 0, axis=1))),
        }
