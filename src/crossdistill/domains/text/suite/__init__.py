"""The text evaluation suite (``crossdistill eval --suite text MODEL``).

Word similarity (WordSim-353, SimLex-999), document similarity (Lee-50), sentence and document
classification (Pang-Lee polarity, mini-newsgroups), WordNet lexicographer classes and retrieval
on held-out synsets, and agreement with a teacher, on any sentence-transformers model, model2vec
model, crossdistill run or registered text model.
"""

from crossdistill.domains.text.suite import tasks  # noqa: F401  (registers the tasks)
from crossdistill.domains.text.suite.base import TEXT_TASKS, TextTask
from crossdistill.domains.text.suite.encoders import TextEncoder, load_encoder
from crossdistill.domains.text.suite.suite import CachedEncoder, run_text_suite, task_names

__all__ = [
    "TEXT_TASKS",
    "CachedEncoder",
    "TextEncoder",
    "TextTask",
    "load_encoder",
    "run_text_suite",
    "task_names",
]
