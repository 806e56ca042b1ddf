"""Real pretrained teachers that install from a package; importing this registers them.

Each module imports its heavy dependencies (sentence-transformers, ...) only when its factory is
called, so registering them costs nothing.
"""

from crossdistill.models.hub import cross_encoder, minilm, sentence_transformer  # noqa: F401  (registers them)
