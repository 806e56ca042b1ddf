"""``crossdistill tune``: search a recipe's settings with Optuna, selecting on the validation
split only (the test split is never read), and write the best recipe out.

:func:`tune_recipe` runs (or continues) a study; :func:`auto_space` is the built-in search
space of a recipe (``tune.space: auto``). Optuna is the ``tune`` extra:
``pip install 'crossdistill[tune]'``; it is imported only when a study runs.
"""

from crossdistill.tune.report import TuneResult
from crossdistill.tune.space import auto_space
from crossdistill.tune.study import default_study_dir, tune_recipe

__all__ = ["TuneResult", "auto_space", "default_study_dir", "tune_recipe"]
