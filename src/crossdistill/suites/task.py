"""``task``: a finished run's student on its recipe's evaluation split (or ``--split``):
accuracy, top-k and calibration for a classifier, ranking or embedding agreement otherwise, and
agreement with the teacher when the run has one."""

from __future__ import annotations

from typing import Any

import pydantic

from crossdistill._util.device import amp_dtype, select_device
from crossdistill.evaluate import evaluate_student
from crossdistill.runs import Run
from crossdistill.suites.base import SUITES, Suite


class TaskOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    split: str | None = None  # default: the recipe's eval split


@SUITES.register("task")
class TaskSuite(Suite):
    """The run's own task, as training evaluated it (same metrics, same precision)."""

    Options = TaskOptions

    def run(self, target: str, options: TaskOptions) -> dict[str, Any]:
        run = Run.open(target)
        recipe = run.recipe([f"data.eval_split={options.split}"] if options.split else None)
        device = select_device(recipe.train.device)
        student = run.student().to(device)
        # with the teacher's outputs cached for the evaluation split, the teacher never runs
        cached = recipe.store is not None and recipe.store.eval_path is not None
        teacher = None if cached else run.teacher()
        loader = run.eval_data(options.split, device=device)
        amp = amp_dtype(recipe.train.amp, device)  # the same precision as in training
        metrics = evaluate_student(
            student,
            loader,
            None if teacher is None else teacher.to(device),
            device,
            amp,
            recipe.eval.topk,
        )
        return {"split": recipe.data.eval_split, **metrics}  # as eval.json names its split

    def result_name(self, target: str, options: TaskOptions) -> str:
        return options.split or Run.open(target).config.data.eval_split
