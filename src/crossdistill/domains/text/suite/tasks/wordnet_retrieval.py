"""WordNet retrieval: find a held-out synset's definition from one of its example sentences."""

from __future__ import annotations

from typing import Any

from crossdistill.domains.text.sentences import DEFAULT_ROOT
from crossdistill.domains.text.suite.base import TEXT_TASKS, TextTask, retrieval_metrics
from crossdistill.domains.text.suite.tasks._wordnet import synsets
from crossdistill.evaluate.embeddings import cosine_matrix


@TEXT_TASKS.register("wordnet_retrieval")
class WordNetRetrieval(TextTask):
    """Queries are the example sentences of held-out synsets, the corpus is every held-out
    gloss, and a query's one right answer is its own synset's gloss; items are ranked by
    cosine. R@1, R@10 and MRR (ties count against the model). Full: about 2,500 queries over
    5,900 glosses; ``quick``: the examples of 1,000 synsets over their glosses."""

    name = "wordnet_retrieval"
    headline = "mrr"

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root

    def run(self, encoder: Any, quick: bool = False) -> dict[str, Any]:
        held = synsets(self.root, quick)
        queries = [(i, text) for i, (_, _, _, examples) in enumerate(held) for text in examples]
        corpus = encoder.encode([gloss for _, _, gloss, _ in held])
        found = encoder.encode([text for _, text in queries])
        return retrieval_metrics(cosine_matrix(found, corpus), [i for i, _ in queries])
