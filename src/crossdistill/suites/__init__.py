"""Evaluation suites: what ``crossdistill eval --suite NAME TARGET`` runs. One registered
:class:`Suite` per file (the domains add theirs: ``text``, ``retrieval``, ``speech-text``,
``image-text``)."""

from crossdistill.registry import import_submodules
from crossdistill.suites.base import SUITES, Suite, evaluate

import_submodules(__name__, __path__)

__all__ = ["SUITES", "Suite", "evaluate"]
