"""crossdistill: knowledge distillation across architectures and modalities.

The public surface is small: :func:`distill` for Python users, ``crossdistill run recipe.yaml``
for the command line; both end in the same code and leave a :class:`Run`. The nouns (Knowledge,
Tap, Teacher, Student, Loss, Distiller, Trainer, Split) and the registries' entry points are
importable from here for users who assemble their own loop or bring their own plug-ins.

Names are loaded on first use (PEP 562), so that importing one submodule, or starting the
command line, does not import the whole library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crossdistill._version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "distill": "crossdistill.api",
    "cache": "crossdistill.api",
    "DistillResult": "crossdistill.api",
    "Recipe": "crossdistill.config",
    "load_recipe": "crossdistill.config",
    "Distiller": "crossdistill.core.distiller",
    "Term": "crossdistill.core.distiller",
    "Knowledge": "crossdistill.core.knowledge",
    "Tap": "crossdistill.core.taps",
    "EnsembleTeacher": "crossdistill.core.wrappers",
    "Student": "crossdistill.core.wrappers",
    "Teacher": "crossdistill.core.wrappers",
    "Split": "crossdistill.data",
    "load_source": "crossdistill.data",
    "build_pipeline": "crossdistill.data.steps",
    "CrossDistillError": "crossdistill.errors",
    "run_generations": "crossdistill.generations",
    "LOSSES": "crossdistill.losses",
    "Loss": "crossdistill.losses",
    "build_loss": "crossdistill.losses",
    "build_model": "crossdistill.models.registry",
    "load_weights": "crossdistill.models.registry",
    "cache_recipe": "crossdistill.pipeline",
    "run_recipe": "crossdistill.pipeline",
    "Run": "crossdistill.runs",
    "load_student": "crossdistill.runs",
    "Trainer": "crossdistill.train.trainer",
    "Callback": "crossdistill.train.callbacks",
    "tune_recipe": "crossdistill.tune",
}

__all__ = [
    "LOSSES",
    "Callback",
    "CrossDistillError",
    "DistillResult",
    "Distiller",
    "EnsembleTeacher",
    "Knowledge",
    "Loss",
    "Recipe",
    "Run",
    "Split",
    "Student",
    "Tap",
    "Teacher",
    "Term",
    "Trainer",
    "__version__",
    "build_loss",
    "build_model",
    "build_pipeline",
    "cache",
    "cache_recipe",
    "distill",
    "load_recipe",
    "load_source",
    "load_student",
    "load_weights",
    "run_generations",
    "run_recipe",
    "tune_recipe",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'crossdistill' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:  # what type checkers and IDEs see
    from crossdistill.api import DistillResult, cache, distill
    from crossdistill.config import Recipe, load_recipe
    from crossdistill.core.distiller import Distiller, Term
    from crossdistill.core.knowledge import Knowledge
    from crossdistill.core.taps import Tap
    from crossdistill.core.wrappers import EnsembleTeacher, Student, Teacher
    from crossdistill.data import Split, load_source
    from crossdistill.data.steps import build_pipeline
    from crossdistill.errors import CrossDistillError
    from crossdistill.generations import run_generations
    from crossdistill.losses import LOSSES, Loss, build_loss
    from crossdistill.models.registry import build_model, load_weights
    from crossdistill.pipeline import cache_recipe, run_recipe
    from crossdistill.runs import Run, load_student
    from crossdistill.train.callbacks import Callback
    from crossdistill.train.trainer import Trainer
    from crossdistill.tune import tune_recipe
