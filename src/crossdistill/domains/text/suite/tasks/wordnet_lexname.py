"""WordNet lexicographer class from the gloss: 45-way topic classification ("noun.animal",
"verb.motion", ...) of definitions of synsets never seen in training."""

from __future__ import annotations

from typing import Any

import numpy as np

from crossdistill.domains.text.sentences import DEFAULT_ROOT
from crossdistill.domains.text.suite.base import TEXT_TASKS, TextTask, cv_accuracy
from crossdistill.domains.text.suite.tasks._wordnet import synsets


@TEXT_TASKS.register("wordnet_lexname")
class WordNetLexname(TextTask):
    """5-fold (shuffled, seed 0) logistic-regression accuracy of the lexicographer class from
    the gloss embedding, over the held-out synsets of
    :func:`~crossdistill.domains.text.sentences.heldout_synsets` (about 5,900 glosses; texts
    that also occur in the training sentences are excluded there). ``quick``: 1,000 synsets."""

    name = "wordnet_lexname"
    headline = "accuracy"

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root

    def run(self, encoder: Any, quick: bool = False) -> dict[str, Any]:
        held = synsets(self.root, quick)
        labels = np.array([lex for _, lex, _, _ in held], dtype=np.int64)
        features = encoder.encode([gloss for _, _, gloss, _ in held])
        result = cv_accuracy(features, labels)
        return {**result, "examples": len(labels), "classes": len(np.unique(labels))}
