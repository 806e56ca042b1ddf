"""Lee-50 document similarity (Lee, Pincombe & Welsh, 2005): 50 news documents, every pair
rated by humans."""

from __future__ import annotations

from typing import Any

import numpy as np

from crossdistill.domains.text.suite.base import TEXT_TASKS, TextTask, correlation
from crossdistill.domains.text.suite.data import GENSIM_HINT, gensim_file, read_lines
from crossdistill.errors import DataError
from crossdistill.evaluate.embeddings import cosine_matrix

DOCUMENTS = "lee.cor"
SIMILARITIES = "similarities0-1.txt"


@TEXT_TASKS.register("lee50")
class Lee50(TextTask):
    """Pearson correlation between the cosine similarities of the 50 documents of ``lee.cor``
    (one per line, each embedded whole, so cut at the model's token window) and the mean human
    similarity of ``similarities0-1.txt`` (a 50x50 matrix whose upper triangle holds the
    ratings), over the 1,225 pairs i < j, as gensim's own Lee test does. 50 documents are
    already small: ``quick`` uses them all."""

    name = "lee50"
    headline = "pearson"

    def run(self, encoder: Any, quick: bool = False) -> dict[str, Any]:
        documents = [line.strip() for line in read_lines(DOCUMENTS, "latin-1") if line.strip()]
        path = gensim_file(SIMILARITIES)
        try:
            human = np.loadtxt(path, dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise DataError(f"{path} is not a numeric matrix: {exc}", hint=GENSIM_HINT) from None
        n = len(documents)
        if human.shape != (n, n):
            raise DataError(
                f"{path} is {human.shape[0]}x{human.shape[1]} but {DOCUMENTS} has {n} documents",
                hint=f"reinstall gensim: {GENSIM_HINT}",
            )
        upper = np.triu_indices(n, k=1)
        model = cosine_matrix(encoder.encode(documents))[upper]
        return {
            "pearson": correlation(model, human[upper], "pearson"),
            "spearman": correlation(model, human[upper], "spearman"),
            "pairs": len(model),
        }
