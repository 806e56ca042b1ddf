"""crossdistill: knowledge distillation across architectures and modalities.

The public surface is small: ``distill()`` for Python users, ``crossdistill run recipe.yaml`` for
the command line; both end in the same code. The nouns (Knowledge, Tap, Teacher, Student, Loss,
Distiller, Trainer) are importable from here for users who assemble their own loop.
"""

from crossdistill.api import distill
from crossdistill.config import Recipe, load_recipe
from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.knowledge import Knowledge
from crossdistill.core.taps import Tap
from crossdistill.core.wrappers import EnsembleTeacher, Student, Teacher
from crossdistill.data import Split, load_source
from crossdistill.errors import CrossDistillError
from crossdistill.losses import LOSSES, Loss, build_loss
from crossdistill.models.registry import build_model
from crossdistill.pipeline import cache_recipe, run_recipe
from crossdistill.runs import Run, load_student
from crossdistill.train.trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "CrossDistillError",
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
    "build_loss",
    "build_model",
    "cache_recipe",
    "distill",
    "load_recipe",
    "load_source",
    "load_student",
    "run_recipe",
]
