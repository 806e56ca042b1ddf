"""The text evaluation suite (``crossdistill eval --suite text MODEL``).

Word similarity (WordSim-353, SimLex-999), document similarity (Lee-50), sentence and document
classification (Pang-Lee polarity, mini-newsgroups), WordNet lexicographer classes and retrieval
on held-out synsets, and agreement with a teacher, on any sentence-transformers model, model2vec
model, crossdistill run or registered text model.
"""

from crossdistill.evaluate.text.base import TEXT_TASKS, TextTask
from crossdistill.evaluate.text.encoders import TextEncoder, load_encoder
from crossdistill.evaluate.text.suite import CachedEncoder, run_text_suite, task_names

__all__ = [
    "TEXT_TASKS",
    "CachedEncoder",
    "TextEncoder",
    "TextTask",
    "load_encoder",
    "run_text_suite",
    "task_names",
]
