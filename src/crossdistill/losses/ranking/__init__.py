"""Ranking losses: the student reproduces how the teacher ranks candidates for a query, either
from per-candidate scores (the Knowledge key ``scores``, ``(B, C)``) or from in-batch
similarities of embeddings, so embedding widths may differ.

One registered loss per module; importing this package registers them all."""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)
